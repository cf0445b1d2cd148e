"""What the Ray cluster a job runs on can give it, asked before the job places work there.

Two questions. Do the store, the artifact root and Ray Train's run storage reach every node?
On a multi-node cluster a node-local path is a different, empty place on every other node:
a replica there finds no model, a Train worker's checkpoint is lost. And can the cluster
give the GPUs a job asks for, now or once its autoscaler has launched a GPU node? If it
cannot, the job warns and runs on CPUs rather than waiting forever for resources that never
come.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Protocol

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError

# Autoscaler status reports the driver must see, after its request, with no GPU node
# pending before it concludes that none will come (the autoscaler answers a request on
# its next update).
UNANSWERED_UPDATES = 3
POLL_S = 1.0


def is_node_local(path: str) -> bool:
    """A plain path or ``file://`` URI names a place on one machine's disk."""
    return "://" not in path or path.startswith("file://")


def node_local_settings(config: EyeNetConfig) -> list[str]:
    """The settings whose values only the driver's node can reach, each with why."""
    found = []
    shared = config.cluster.shared_filesystem
    if config.store_uri.startswith("sqlite") and not shared:
        found.append(f"store_uri ({config.store_uri}) is a SQLite file on this node; use "
                     "mongodb://HOST/eyenet")
    if is_node_local(config.artifact_root) and not shared:
        found.append(f"artifact_root ({config.artifact_root}) is a path on this node; use "
                     "s3://BUCKET/PREFIX (or gs://...)")
    storage = config.cluster.train_storage_path
    if storage is None:
        found.append("cluster.train_storage_path is unset, so Ray Train checkpoints to a "
                     "temporary directory on the driver's node; use s3://BUCKET/PREFIX")
    elif is_node_local(storage) and not shared:
        found.append(f"cluster.train_storage_path ({storage}) is a path on this node; use "
                     "s3://BUCKET/PREFIX")
    return found


def check_paths_reach_every_node(config: EyeNetConfig, alive_nodes: int) -> None:
    """Refuse node-local settings on a cluster of several nodes; warn on one node of a
    cluster the job joined (its autoscaler may add nodes the paths do not reach)."""
    found = node_local_settings(config)
    if not found:
        return
    fix = ("; or, if those paths are on a filesystem every node mounts at the same place, "
           "set cluster.shared_filesystem: true")
    if alive_nodes > 1:
        raise ConfigError(f"this Ray cluster has {alive_nodes} nodes and these settings reach only "
                          "one of them: " + "; ".join(found) + fix, "cluster")
    warn("if this cluster adds nodes, these settings will not reach them: " + "; ".join(found) + fix)


class ClusterResources(Protocol):
    def gpus(self) -> float: ...
    def request(self, bundles: list[dict[str, float]]) -> None: ...
    def autoscaler_update(self) -> tuple[float, bool] | None:
        """(time of the autoscaler's latest status report, whether it is launching nodes)."""


class RayClusterResources:
    """:class:`ClusterResources` of the connected Ray cluster."""

    def gpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0.0))

    def request(self, bundles: list[dict[str, float]]) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)

    def autoscaler_update(self) -> tuple[float, bool] | None:
        # The report `ray status` prints; Ray has no public getter for it.
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        if not raw:
            return None
        status = json.loads(raw)
        report = status.get("autoscaler_report") or {}
        return float(status.get("time", 0.0)), bool(report.get("pending_launches") or
                                                      report.get("pending_nodes"))


@dataclass
class GpuWait:
    """The driver's wait for GPUs, as a result: how many to use and why."""

    gpus: float
    reason: str = ""


def usable_gpus(requested: float, wait_s: float, *, started_here: bool,
                cluster: ClusterResources | None = None, what: str = "training") -> GpuWait:
    """``requested`` if the cluster has GPUs or its autoscaler brings a GPU node within
    ``wait_s``; else 0, with a warning that ``what`` runs on CPUs."""
    if requested <= 0:
        return GpuWait(0.0)
    cluster = cluster or RayClusterResources()
    if cluster.gpus() > 0:
        return GpuWait(requested)
    if started_here:  # a Ray this process started has this machine's devices and no more
        return _fallback(requested, what, "this machine has no GPU Ray can see")
    started = time.monotonic()
    asked_at = time.time()
    cluster.request([{"GPU": min(requested, 1.0)}])
    seen: list[float] = []
    try:
        while time.monotonic() - started < wait_s:
            if cluster.gpus() > 0:
                return GpuWait(requested, "a GPU node joined")
            update = cluster.autoscaler_update()
            if update is not None and update[0] > asked_at:
                if update[1]:
                    seen.clear()  # a node is on its way: wait for it
                elif update[0] not in seen:
                    seen.append(update[0])
                if len(seen) >= UNANSWERED_UPDATES:
                    return _fallback(requested, what, "the cluster's autoscaler launches no GPU "
                                     f"node for it ({len(seen)} updates)")
            time.sleep(POLL_S)
    finally:
        cluster.request([])  # from here the job's own resource demand keeps the node
    return _fallback(requested, what, f"no GPU node joined within cluster.gpu_wait_s ({wait_s:g} s)")


def _fallback(requested: float, what: str, why: str) -> GpuWait:
    warn(f"{requested:g} GPU(s) asked for, but {why}: {what} runs on CPUs")
    return GpuWait(0.0, why)


def warn(message: str) -> None:
    """To the job's output, which ``ray job logs`` and the submitter show."""
    print(f"warning: {message}", flush=True)
