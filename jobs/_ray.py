"""Connecting to Ray the same way from every job and command."""

from __future__ import annotations

import logging
import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster ``ray job submit`` or ``RAY_ADDRESS`` names, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    # Ray Train and Data log every report and dataset execution at INFO; epoch lines are ours.
    os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:  # with the dashboard: Ray Train's placement-group cleanup relies on the state API
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING)
