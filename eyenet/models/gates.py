"""Promotion gates that need no labels (real fleets have none).

A gate is ``gate(candidate: ModelVersion, local_dir: Path) -> list[str]``: the reasons it
refuses, empty when it passes (see :meth:`ModelRegistry.promote`). The replay gate:

* loads the candidate and scores the most recently active devices' last
  ``promotion.gate_window_s`` of telemetry from the store;
* refuses non-finite scores or scores outside 0..1, and an alert rate (share of flagged
  points) above ``promotion.gate_max_alert_rate``: a model that would page on every
  device is not an improvement, whatever its loss;
* reports, without gating, how often it agrees with the current production model on the
  same points; the figures are saved on the version's record (``gate_report``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import EyeNetError
from eyenet.models.registry import ModelRegistry, ModelVersion
from eyenet.telemetry.schema import TIMESTAMP


class ReplayGate:
    __name__ = "replay_gate"

    def __init__(self, config: EyeNetConfig, registry: ModelRegistry) -> None:
        self.config, self.registry = config, registry
        self.report: dict[str, Any] = {}

    def recent_telemetry(self) -> pd.DataFrame:
        cfg = self.config.promotion
        devices = sorted(self.registry.store.list_devices(), key=lambda d: d.last_ts, reverse=True)
        devices = devices[:cfg.gate_max_devices]
        if not devices:
            return pd.DataFrame()
        end = max(d.last_ts for d in devices)
        start = pd.Timestamp(end) - pd.Timedelta(seconds=cfg.gate_window_s)
        frame = self.registry.store.read_range(start, pd.Timestamp(end) + pd.Timedelta(milliseconds=1),
                                               [d.device_id for d in devices])
        return frame.drop(columns=["label"], errors="ignore")

    def __call__(self, candidate: ModelVersion, local_dir: Path) -> list[str]:
        started = time.perf_counter()
        try:
            detector = Detector.load(local_dir)
        except EyeNetError as exc:
            return [f"cannot load the candidate: {exc}"]
        frame = self.recent_telemetry()
        if frame.empty:
            return ["no recent telemetry in the store to replay (ingest some first)"]
        missing = [m for m in detector.metrics if m not in frame.columns]
        if missing:
            return [f"the store holds no {missing} for the candidate's metrics"]
        scores = detector.score(frame)
        scored = scores["raw_score"].notna().to_numpy()
        values = scores["score"].to_numpy()
        reasons = []
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
            reasons.append("scores outside 0..1 or not finite on recent telemetry")
        points = int(scored.sum())
        if points == 0:
            return [*reasons, f"recent telemetry ({len(frame)} rows) holds no full window to score"]
        alert_rate = float(scores["is_anomaly"].to_numpy()[scored].mean())
        limit = self.config.promotion.gate_max_alert_rate
        if alert_rate > limit:
            reasons.append(f"alert rate {alert_rate:.3f} on {points} replayed points exceeds the "
                           f"budget {limit:.3f}")
        self.report = {"replayed_points": points, "devices": int(scores["device_id"].nunique()),
                       "alert_rate": alert_rate, "alert_budget": limit,
                       "window_end": str(pd.Timestamp(frame[TIMESTAMP].max())),
                       "agreement_with_production": self._agreement(candidate, frame, scores),
                       "seconds": round(time.perf_counter() - started, 2)}
        self.registry.store.update_model_record(candidate.name, candidate.version,
                                                {"gate_report": self.report})
        return reasons

    def _agreement(self, candidate: ModelVersion, frame: pd.DataFrame, scores: pd.DataFrame) -> float | None:
        production = self.registry.production(candidate.name)
        if production is None:
            return None
        current = Detector.load(self.registry.fetch(production.name, production.version)).score(frame)
        both = scores["raw_score"].notna().to_numpy() & current["raw_score"].notna().to_numpy()
        if not both.any():
            return None
        return float((scores["is_anomaly"].to_numpy()[both] == current["is_anomaly"].to_numpy()[both]).mean())


def promotion_gates(config: EyeNetConfig, registry: ModelRegistry) -> list[Any]:
    return [ReplayGate(config, registry)]
