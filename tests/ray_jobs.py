"""``ray job submit`` as a user types it, for the tests that submit jobs to a cluster."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = Path(sys.executable).with_name("ray")
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 60


def submit(address: str, *entrypoint: str, env: dict[str, Any] | None = None,
           timeout_s: float = 900) -> tuple[subprocess.CompletedProcess[str], str]:
    """Submit ``python -m ENTRYPOINT`` with this repository as the working dir and wait for
    it; returns the finished submitter and the job id."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        job_id = f"eyenet-test-{uuid.uuid4().hex[:8]}"
        done = subprocess.run([str(RAY_CLI), "job", "submit", "--address", address, "--submission-id", job_id,
                               "--working-dir", str(REPO), "--", sys.executable, "-m", *entrypoint],
                              capture_output=True, text=True, timeout=timeout_s, cwd=REPO, env=env)
        # a head that has just started serves its dashboard before its job agent registers
        if NO_AGENT not in done.stderr or time.monotonic() > deadline:
            return done, job_id


def job_status(address: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(job_id).value)
