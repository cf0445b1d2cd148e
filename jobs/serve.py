"""``eyenet serve`` / ``python -m jobs.serve``: deploy the HTTP API on Ray Serve.

Starts Serve's proxy on ``serve.host:serve.port`` and deploys the application (ingress
plus the batched detector). Without ``--detach`` it stays up until interrupted and then
tears the application down; with it, the application outlives this process (on a
cluster, as with ``serve deploy serve_app/serve_config.yaml``).
"""

from __future__ import annotations

import time
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import PipelineError
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from jobs.options import ServeOptions, job_main


def run_serve(config: EyeNetConfig, detach: bool = False) -> dict[str, Any]:
    from ray import serve

    from jobs._ray import ensure_ray
    from serve_app.deployments import APP_NAME, build_app

    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    if registry.production() is None:  # checked before Ray starts: say what to do instead
        raise PipelineError("no production model to serve: train one (`eyenet train`) and promote "
                            "it (`eyenet models promote VERSION`)")
    ensure_ray()
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
    run_serve(with_http(config, options.host, options.port), detach=options.detach)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ServeOptions, main, prog="python -m jobs.serve",
                              description=__doc__))
