"""``eyenet serve`` / ``python -m jobs.serve``: deploy the HTTP API on Ray Serve.

Starts Serve's proxy on ``serve.host:serve.port`` and deploys the application (ingress
plus the batched detector). Without ``--detach`` it stays up until interrupted and then
tears the application down; with it, the application outlives this process (on a
cluster, as with ``serve deploy serve_app/serve_config.yaml``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError, PipelineError
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from jobs.options import ServeOptions, job_main
from serve_app.api import ADMIN_KEY_ENV, API_KEY_ENV

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_exposure(config: EyeNetConfig, insecure: bool) -> None:
    """Refuse to serve beyond loopback without an API key unless told ``--insecure``: every
    device's scores and the fleet's telemetry would be readable by anyone who can reach it."""
    host = config.serve.host
    if host in LOOPBACK_HOSTS or insecure or os.environ.get(API_KEY_ENV):
        return
    raise ConfigError(f"serving on {host}, beyond loopback, without {API_KEY_ENV} would let anyone who "
                      f"can reach it read every device's scores: set {API_KEY_ENV} (and {ADMIN_KEY_ENV} "
                      "to allow promote/rollback over HTTP), or pass --insecure", "serve.host", host)


def run_serve(config: EyeNetConfig, detach: bool = False, insecure: bool = False) -> dict[str, Any]:
    from ray import serve

    from jobs._ray import ensure_ray, gpus_for
    from serve_app.deployments import APP_NAME, build_app

    check_exposure(config, insecure)
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    if registry.production() is None:  # checked before Ray starts: say what to do instead
        raise PipelineError("no production model to serve: train one (`eyenet train`) and promote "
                            "it (`eyenet models promote VERSION`)")
    ensure_ray(config=config)
    if config.serve.num_gpus:  # waits for a GPU node, or places the replicas on CPUs
        gpus = gpus_for(config, config.serve.num_gpus, what="the detector replicas")
        config = config.model_copy(update={"serve": config.serve.model_copy(update={"num_gpus": gpus})})
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    url = f"http://{config.serve.host}:{config.serve.port}"
    print(f"serving on {url} (OpenAPI at {url}/docs)", flush=True)
    if detach:
        return {"url": url, "detached": True}
    try:
        while True:
            time.sleep(3600)  # Serve runs in its own actors; this process only keeps it up
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
    return {"url": url, "detached": False}


def with_http(config: EyeNetConfig, host: str | None, port: int | None) -> EyeNetConfig:
    """``config`` with ``--host``/``--port`` over ``serve.host``/``serve.port``."""
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if not overrides:
        return config
    serve_section = {**config.serve.model_dump(), **overrides}
    return EyeNetConfig.from_dict({**config.to_dict(), "serve": serve_section},
                                  {f"serve.{k}": f"--{k}" for k in overrides})


def main(config: EyeNetConfig, options: ServeOptions) -> int:
    run_serve(with_http(config, options.host, options.port), detach=options.detach, insecure=options.insecure)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ServeOptions, main, prog="python -m jobs.serve",
                              description=__doc__))
