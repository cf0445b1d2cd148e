"""The feature/scoring pool: N actors, each scoring the devices routed to it.

Live samples reach an actor from the collectors (``score``), always the same actor for a
device (:func:`actors.collector.route`) because the stream scorer keeps that device's
window and error profile. Bulk scoring (``score_frame``) splits a frame by device over
all actors. Each actor follows the registry's production model
(:class:`eyenet.models.follower.ProductionFollower`, the mechanism Serve replicas and the
monitor use too): a thread loads a newly promoted (or rolled back) version, and the next
batch is scored with it, so a batch in flight finishes on the model it started with. Batch
summaries go to the monitor as fire-and-forget calls, so a slow monitor never slows
scoring.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import PipelineError
from eyenet.models.follower import ProductionFollower
from eyenet.models.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.store import open_store
from eyenet.streaming.live import LiveScorer
from eyenet.telemetry.schema import DEVICE

log = logging.getLogger(__name__)

FEATURE_ACTOR_CPUS = 0.25


def no_production_error(name: str) -> PipelineError:
    return PipelineError(f"model {name} has no production version: train one and run "
                         f"`eyenet models promote {name} VERSION`")


def load_version(registry: ModelRegistry, name: str, version: int) -> Detector:
    """Version ``version`` of model ``name``, verified against its manifest and loaded."""
    with registry.opened(name, version) as path:
        return Detector.load(path)  # reads every file into memory: the copy can go


def load_production(config: EyeNetConfig, name: str = DEFAULT_MODEL_NAME,
                    version: int | None = None) -> tuple[Detector, int]:
    """The production model (or ``version``) of ``name``, verified and loaded."""
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    if version is None:
        production = registry.production(name)
        if production is None:
            raise no_production_error(name)
        version = production.version
    return load_version(registry, name, version), version


class FeatureActor:
    def __init__(self, config: dict[str, Any], model_name: str = DEFAULT_MODEL_NAME,
                 model_version: int | None = None, monitor: Any = None) -> None:
        """``model_version``: the version to start on (the one the pipeline saw, so the
        whole pool starts alike); production is followed from then on."""
        import torch

        torch.set_num_threads(1)  # one core per actor: the pool, not one actor, uses the machine
        self.config = EyeNetConfig.from_dict(config)
        store = open_store(self.config.store_uri)
        registry = ModelRegistry(store, self.config.artifact_root)
        self.follower = ProductionFollower.of_registry(
            registry, model_name, lambda v: load_version(registry, model_name, v),
            self.config.registry_poll_interval_s)
        if model_version is not None:
            self.follower.switch_to(model_version)
        else:
            self.follower.refresh()
        followed = self.follower.current
        if followed is None:
            raise no_production_error(model_name)
        self.live = LiveScorer(followed.value, store, self.config, followed.version)
        self.monitor = monitor
        self.monitor_errors = 0
        # loading runs on the follower's thread; the swap happens between batches (_current)
        self._stop_following = self.follower.start(name="pool-model-follower")

    def _current(self) -> LiveScorer:
        """The live scorer on the follower's newest model: called at the start of each call
        (actor calls run one at a time), so no batch ever sees two models."""
        followed = self.follower.current
        if followed is not None and followed.version != self.live.model_version:
            self.live.switch_model(followed.value, followed.version)
        return self.live

    def score(self, samples: pd.DataFrame, polled_at_s: float | None = None) -> dict[str, Any]:
        scores, summary = self._current().score(samples, polled_at_s)
        if self.monitor is not None:
            try:
                self.monitor.record.remote(summary)
            except Exception as exc:  # the monitor restarting must not fail scoring
                self.monitor_errors += 1
                log.warning("monitor unreachable: %s", exc)
        return {"scored": len(scores), "anomalies": int(scores["is_anomaly"].sum()),
                "latency_ms": summary.latency_ms}

    def score_frame(self, frame: pd.DataFrame) -> dict[str, Any]:
        """Bulk scoring of a history frame with the offline detector (no stream state)."""
        started = time.perf_counter()
        scores = self._current().detector.score(frame)
        windows = int(scores["raw_score"].notna().sum())
        return {"rows": len(scores), "windows": windows, "anomalies": int(scores["is_anomaly"].sum()),
                "seconds": time.perf_counter() - started}

    def stats(self) -> dict[str, Any]:
        stats = self._current().stats()
        stats["monitor_errors"] = self.monitor_errors
        stats["follower"] = self.follower.stats()
        stats["pid"] = os.getpid()   # a new one after a restart
        return stats

    def reset_stats(self) -> None:
        """Start latency and count figures afresh (a benchmark's measured period)."""
        self.live.reset_stats()

    def flush(self) -> dict[str, Any]:
        self.live.flush()
        return self.stats()

    def stop(self) -> None:
        """Stop following the registry (the actor is about to go)."""
        self._stop_following.set()


def split_by_device(frame: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    """``frame`` cut into at most ``parts`` frames of whole devices with similar row counts."""
    sizes = frame[DEVICE].value_counts()
    loads = np.zeros(parts)
    owner: dict[str, int] = {}
    for device, size in sizes.items():  # largest first onto the least loaded part
        i = int(np.argmin(loads))
        owner[device] = i
        loads[i] += size
    index = frame[DEVICE].map(owner).to_numpy()
    return [frame[index == i] for i in range(parts) if (index == i).any()]
