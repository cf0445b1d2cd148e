"""Connecting to Ray the same way from every job and command."""

from __future__ import annotations

import logging
import os

from eyenet.config import EyeNetConfig


def ensure_ray(num_cpus: int | None = None, config: EyeNetConfig | None = None) -> None:
    """Join the cluster ``ray job submit`` or ``RAY_ADDRESS`` names, else start a local one.

    With ``config``, a joined cluster is checked for settings only its driver's node
    reaches (:func:`jobs.cluster.check_paths_reach_every_node`)."""
    import ray

    if not ray.is_initialized():
        # Ray Train and Data log every report and dataset execution at INFO; epoch lines are ours.
        os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:  # with the dashboard: Ray Train's placement-group cleanup relies on the state API
            ray.init(num_cpus=num_cpus, logging_level=logging.WARNING)
    if config is not None and not started_here():
        from jobs.cluster import check_paths_reach_every_node

        check_paths_reach_every_node(config, sum(1 for n in ray.nodes() if n.get("Alive")))


def started_here() -> bool:
    """Whether this process started the Ray it is connected to (then the cluster is this
    machine and nothing more) rather than joining one (``ray job submit``, RAY_ADDRESS, or
    a cluster ``ray start`` runs on this machine, which a plain ray.init() joins)."""
    import ray

    node = ray._private.worker._global_node if ray.is_initialized() else None
    return bool(node is not None and node.head)
