"""Starting and stopping the live pipeline: collectors → feature pool → monitor.

Devices are sorted and cut into groups of ``streaming.devices_per_actor``; group ``i``'s
collector is named ``<source>-<i>`` and keeps its cursors in the store under that name, so
a pipeline restarted over the same devices resumes where the last one stopped. Without
a production model the pipeline still collects (history for a first training run) and
says so.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from actors.collector import COLLECTOR_CPUS, COLLECTOR_PREFIX, CollectorActor, route
from actors.features import FEATURE_ACTOR_CPUS, FeatureActor, split_by_device
from actors.monitor import NAMESPACE, get_monitor
from eyenet.config import EyeNetConfig
from eyenet.errors import PipelineError
from eyenet.models.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.sources.factory import build_source
from eyenet.store import open_store

log = logging.getLogger(__name__)

# A killed collector or scorer is restarted by Ray; it resumes from the store. Calls made
# while it restarts wait for it (a collector's poll state lives in the store, a scorer's
# stream state is rebuilt from what arrives next).
ACTOR_RESTARTS = -1
TASK_RETRIES = -1


@dataclass
class Pipeline:
    config: EyeNetConfig
    collectors: list[Any]
    groups: list[list[str]]
    feature_actors: list[Any] = field(default_factory=list)
    monitor: Any = None
    scoring: bool = True

    def collector_of(self, device_id: str) -> Any:
        for handle, group in zip(self.collectors, self.groups, strict=True):
            if device_id in group:
                return handle
        raise PipelineError(f"device {device_id!r} is not collected by this pipeline")

    def feature_actor_of(self, device_id: str) -> Any:
        if not self.feature_actors:
            raise PipelineError("the pipeline runs without scoring (no production model)")
        return self.feature_actors[route(device_id, len(self.feature_actors))]

    def stats(self, timeout_s: float = 30.0) -> dict[str, Any]:
        import ray

        collectors = ray.get([c.stats.remote() for c in self.collectors], timeout=timeout_s)
        scorers = ray.get([f.stats.remote() for f in self.feature_actors], timeout=timeout_s)
        return {"collectors": collectors, "feature_actors": scorers,
                "stored": sum(c["totals"].get("stored", 0) for c in collectors),
                "scored": sum(s["totals"].get("samples", 0) for s in scorers)}

    def score_frame(self, frame: pd.DataFrame, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        """Bulk-score a history frame over the whole pool (split by device)."""
        import ray

        if not self.feature_actors:
            raise PipelineError("the pipeline runs without scoring (no production model)")
        parts = split_by_device(frame, len(self.feature_actors))
        return ray.get([a.score_frame.remote(p) for a, p in zip(self.feature_actors, parts, strict=False)],
                       timeout=timeout_s)

    def stop(self, timeout_s: float = 60.0, keep_scorers: bool = False) -> dict[str, Any]:
        """Stop collecting, let scoring drain, close open anomaly episodes, free the actors
        (the feature pool stays up with ``keep_scorers``, for bulk scoring). The detached
        monitor keeps running."""
        import ray

        final = {"collectors": ray.get([c.stop.remote() for c in self.collectors], timeout=timeout_s)}
        if self.feature_actors:
            final["feature_actors"] = ray.get([f.flush.remote() for f in self.feature_actors],
                                              timeout=timeout_s)
        for handle in [*self.collectors, *([] if keep_scorers else self.feature_actors)]:
            ray.kill(handle)
        return final


def device_groups(device_ids: list[str], per_actor: int) -> list[list[str]]:
    devices = sorted(dict.fromkeys(device_ids))
    return [devices[i:i + per_actor] for i in range(0, len(devices), per_actor)]


def start_pipeline(config: EyeNetConfig, source_kind: str, source_options: dict[str, Any],
                   device_ids: list[str] | None = None, start_ms: int | None = None,
                   score: bool = True, model_name: str = DEFAULT_MODEL_NAME) -> Pipeline:
    """Create the actors on the connected Ray cluster (see :func:`jobs._ray.ensure_ray`)."""
    import ray

    source = build_source(source_kind, config, **source_options)  # validates options here, once
    devices = device_ids or source.devices()
    source.close()
    if source.interval_s > config.gap_s:
        raise PipelineError(
            f"source {source_kind} delivers a sample every {source.interval_s:g} s but the config's "
            f"sample_interval_s is {config.sample_interval_s:g} s (gaps from {config.gap_s:g} s): every "
            "sample would start a new segment and nothing could be scored; set sample_interval_s "
            f"(EYENET_SAMPLE_INTERVAL_S={source.interval_s:g})")
    if not devices:
        raise PipelineError(f"source {source_kind} has no devices")
    monitor = get_monitor(config)
    feature_actors: list[Any] = []
    if score:
        registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
        production = registry.production(model_name)
        if production is None:
            log.warning("no production model of %s: collecting without scoring", model_name)
            score = False
        else:
            remote = ray.remote(FeatureActor).options(
                num_cpus=FEATURE_ACTOR_CPUS, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)
            feature_actors = [remote.remote(config.to_dict(), model_name, production.version, monitor)
                              for _ in range(config.streaming.feature_actors)]
    groups = device_groups(devices, config.streaming.devices_per_actor)
    remote = ray.remote(CollectorActor)
    run = uuid.uuid4().hex[:8]  # two pipelines at once must not clash on actor names
    collectors = [remote.options(num_cpus=COLLECTOR_CPUS, max_restarts=ACTOR_RESTARTS,
                                 max_task_retries=TASK_RETRIES, namespace=NAMESPACE,
                                 name=f"{COLLECTOR_PREFIX}{source_kind}-{i}-{run}")
                  .remote(config.to_dict(), source_kind, source_options, group, f"{source_kind}-{i}",
                          feature_actors, start_ms)
                  for i, group in enumerate(groups)]
    return Pipeline(config, collectors, groups, feature_actors, monitor, score)
