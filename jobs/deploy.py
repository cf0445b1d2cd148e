"""``python -m jobs.deploy``: deploy the HTTP API onto the cluster this job runs on.

Under ``ray job submit`` the job joins the cluster it was submitted to, starts Serve's
proxy on ``serve.host:serve.port`` (``--host``/``--port``), deploys the application
(ingress plus the batched detector) and exits; the application stays up, following the
registry's production model, until ``serve shutdown`` or another deploy replaces it.
``eyenet serve --detach`` does the same from a terminal.
"""

from __future__ import annotations

from eyenet.config import EyeNetConfig
from jobs.options import DeployOptions, job_main
from jobs.serve import run_serve, with_http


def main(config: EyeNetConfig, options: DeployOptions) -> int:
    run_serve(with_http(config, options.host, options.port), detach=True, insecure=options.insecure)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(DeployOptions, main, prog="python -m jobs.deploy", description=__doc__))
