"""The feature/scoring pool: N actors, each scoring the devices routed to it.

Live samples reach an actor from the collectors (``score``), always the same actor for a
device (:func:`actors.collector.route`) because the stream scorer keeps that device's
window and error profile. Bulk scoring (``score_frame``) splits a frame by device over
all actors. Each actor loads the production model from the registry once; batch
summaries go to the monitor as fire-and-forget calls, so a slow monitor never slows
scoring.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detector import Detector
from eyenet.errors import PipelineError
from eyenet.live import LiveScorer
from eyenet.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.store import open_store
from eyenet.telemetry import DEVICE

log = logging.getLogger(__name__)

FEATURE_ACTOR_CPUS = 0.25


def load_production(config: EyeNetConfig, name: str = DEFAULT_MODEL_NAME,
                    version: int | None = None) -> tuple[Detector, int]:
    """The production model (or ``version``) of ``name``, verified and loaded."""
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    if version is None:
        production = registry.production(name)
        if production is None:
            raise PipelineError(f"model {name} has no production version: train one and run "
                                f"`eyenet models promote {name} VERSION`")
        version = production.version
    path = registry.fetch(name, version, cache_dir=tempfile.mkdtemp(prefix="eyenet-model-"))
    return Detector.load(path), version


class FeatureActor:
    def __init__(self, config: dict[str, Any], model_name: str = DEFAULT_MODEL_NAME,
                 model_version: int | None = None, monitor: Any = None) -> None:
        import torch

        torch.set_num_threads(1)  # one core per actor: the pool, not one actor, uses the machine
        self.config = EyeNetConfig.from_dict(config)
        detector, version = load_production(self.config, model_name, model_version)
        self.live = LiveScorer(detector, open_store(self.config.store_uri), self.config, version)
        self.monitor = monitor
        self.monitor_errors = 0

    def score(self, samples: pd.DataFrame, polled_at_s: float | None = None) -> dict[str, Any]:
        scores, summary = self.live.score(samples, polled_at_s)
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
        scores = self.live.detector.score(frame)
        windows = int(scores["raw_score"].notna().sum())
        return {"rows": len(scores), "windows": windows, "anomalies": int(scores["is_anomaly"].sum()),
                "seconds": time.perf_counter() - started}

    def window(self, device_id: str) -> pd.DataFrame:
        return self.live.stream.window_frame(device_id)

    def stats(self) -> dict[str, Any]:
        stats = self.live.stats()
        stats["monitor_errors"] = self.monitor_errors
        return stats

    def reset_stats(self) -> None:
        """Start latency and count figures afresh (a benchmark's measured period)."""
        self.live.reset_stats()

    def flush(self) -> dict[str, Any]:
        self.live.flush()
        return self.stats()


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
