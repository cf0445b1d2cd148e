"""Ray Serve deployments: the FastAPI ingress, the batched detector, the app builder."""
