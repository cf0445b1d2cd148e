"""Connecting to Ray the same way from every job and command."""

from __future__ import annotations

import logging
import os

from eyenet.config import EyeNetConfig

# Ray Train and Data log every report and dataset execution at INFO, and draw progress
# bars; the epoch lines are ours.
QUIET_TRAIN_AND_DATA = {"RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
                        "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def quiet_train_and_data() -> None:
    """Set :data:`QUIET_TRAIN_AND_DATA` where the environment does not say otherwise (before
    ray.init: the workers inherit it)."""
    for key, value in QUIET_TRAIN_AND_DATA.items():
        os.environ.setdefault(key, value)


def ensure_ray(num_cpus: int | None = None, config: EyeNetConfig | None = None) -> None:
    """Join the cluster ``ray job submit`` or ``RAY_ADDRESS`` names, else start a local one.

    With ``config``, a joined cluster is checked for settings only its driver's node
    reaches (:func:`jobs.cluster.check_paths_reach_every_node`)."""
    import ray

    if not ray.is_initialized():
        quiet_train_and_data()
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:  # with the dashboard: Ray Train's placement-group cleanup relies on the state API
            ray.init(num_cpus=num_cpus, logging_level=logging.WARNING)
    if config is not None and not started_here():
        from jobs.cluster import check_paths_reach_every_node

        check_paths_reach_every_node(config, sum(1 for n in ray.nodes() if n.get("Alive")))


def gpus_for(config: EyeNetConfig, requested: float, what: str = "training") -> float:
    """The GPUs ``what`` gets on the connected Ray: ``requested``, or 0 after a warning
    (:func:`jobs.cluster.usable_gpus`, waiting up to ``cluster.gpu_wait_s``)."""
    from jobs.cluster import usable_gpus

    return usable_gpus(requested, config.cluster.gpu_wait_s, started_here=started_here(), what=what).gpus


def started_here() -> bool:
    """Whether this process started the Ray it is connected to (then the cluster is this
    machine and nothing more) rather than joining one (``ray job submit``, RAY_ADDRESS, or
    a cluster ``ray start`` runs on this machine, which a plain ray.init() joins)."""
    import ray

    node = ray._private.worker._global_node if ray.is_initialized() else None
    return bool(node is not None and node.head)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a benchmark's own Serve or server)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
