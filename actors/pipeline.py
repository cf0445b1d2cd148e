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
from eyenet.sources.specs import DeviceSpec
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
    source_kind: str = "simulated"
    source_options: dict[str, Any] = field(default_factory=dict)
    start_ms: int | None = None
    names: list[str] = field(default_factory=list)     # each collector's name (its state key)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    restarts: int = 0

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

    def start_collector(self, name: str, group: list[str]) -> Any:
        import ray

        self.restarts += 1   # a fresh actor name each time: a killed actor's name frees up late
        return (ray.remote(CollectorActor)
                .options(num_cpus=COLLECTOR_CPUS, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES,
                         namespace=NAMESPACE, name=f"{COLLECTOR_PREFIX}{name}-{self.run}-{self.restarts}")
                .remote(self.config.to_dict(), self.source_kind, self.source_options, group, name,
                        self.feature_actors, self.start_ms))

    def reload_devices(self, devices: list[DeviceSpec], timeout_s: float = 60.0) -> dict[str, list[str]]:
        """Poll this device list from now on (``--source devices``), without a restart.

        Groups stay where they are (a collector's cursors and counter baselines are kept in
        the store under its name): only a collector that loses a device or holds one whose
        entry changed is replaced, after it stopped and saved its state; new devices fill
        the last group with room, then new collectors. Devices left alone keep polling.
        """
        import ray

        if self.source_kind != "devices":
            raise PipelineError(f"only --source devices reloads its device list, not {self.source_kind}")
        data = self.config.to_dict()
        data["devices"] = [spec.model_dump(mode="json") for spec in devices]
        config = EyeNetConfig.from_dict(data)   # the cross-checks, before anything changes
        old = {spec.id: spec for spec in self.config.devices}
        new = {spec.id: spec for spec in config.devices}
        removed = sorted(set(old) - set(new))
        changed = sorted(d for d in set(old) & set(new) if old[d] != new[d])
        added = sorted(set(new) - set(old))
        self.config = config
        per_actor = config.streaming.devices_per_actor
        groups = [[d for d in group if d in new] for group in self.groups]
        touched = {i for i, group in enumerate(self.groups) if set(group) & set(removed + changed)}
        for device in added:
            room = [i for i, g in enumerate(groups) if len(g) < per_actor]
            if not room:
                groups.append([])
                self.names.append(f"{self.source_kind}-{len(self.names)}")
                self.collectors.append(None)
                room = [len(groups) - 1]
            groups[room[-1]].append(device)
            touched.add(room[-1])
        for i in sorted(touched):
            if self.collectors[i] is not None:
                ray.get(self.collectors[i].stop.remote(), timeout=timeout_s)
                ray.kill(self.collectors[i])
            self.collectors[i] = self.start_collector(self.names[i], groups[i]) if groups[i] else None
        keep = [i for i, g in enumerate(groups) if g]
        self.groups = [groups[i] for i in keep]
        self.collectors = [self.collectors[i] for i in keep]
        self.names = [self.names[i] for i in keep]
        log.info("device list reloaded: %d added, %d removed, %d changed; %d collectors replaced",
                 len(added), len(removed), len(changed), len(touched))
        return {"added": added, "removed": removed, "changed": changed,
                "collectors_replaced": [self.names[i] for i in sorted(touched) if i in keep]}

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
    # the run id keeps two pipelines at once from clashing on actor names
    pipeline = Pipeline(config, [], groups, feature_actors, monitor, score, source_kind, source_options,
                        start_ms, names=[f"{source_kind}-{i}" for i in range(len(groups))])
    pipeline.collectors = [pipeline.start_collector(name, group)
                           for name, group in zip(pipeline.names, groups, strict=True)]
    return pipeline
