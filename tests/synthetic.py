"""Small synthetic fleets and configs shared by the unit and integration tests.

Plain functions and constants; fixtures live in the ``conftest.py`` files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eyenet.config import DetectorConfig, EyeNetConfig
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store

METRICS = ["cpu", "memory", "latency"]
T0 = pd.Timestamp("2024-01-01", tz="UTC")
WINDOW = 8
DEVICES = 6  # the integration tests' simulated fleet
SEED = 11


def config(**overrides) -> DetectorConfig:
    base = dict(hidden_size=8, num_layers=1, window_steps=WINDOW, max_epochs=3, batch_size=64,
                learning_rate=1e-2)
    return DetectorConfig(**{**base, **overrides})


def telemetry(n: int = 600, start_s: int = 0, seed: int = 0, devices=("r1", "r2"),
              metrics=METRICS) -> pd.DataFrame:
    """Sines plus noise at 1 s for each device (a different phase per device and period per
    metric)."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, device in enumerate(devices):
        t = start_s + np.arange(n, dtype=np.float64)
        part = pd.DataFrame({"device_id": device, "timestamp": T0 + pd.to_timedelta(t, unit="s")})
        for j, m in enumerate(metrics):
            part[m] = 50.0 + 10.0 * np.sin(2 * np.pi * t / (20 + 7 * (j % 5)) + i) + rng.normal(0, 0.5, n)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_frame() -> tuple[pd.DataFrame, np.ndarray]:
    """200 later rows per device; rows 100..104 of r2 carry a latency spike (mask returned)."""
    frame = telemetry(200, start_s=600, seed=1)
    spike = (frame["device_id"] == "r2").to_numpy() & np.isin(np.arange(len(frame)) % 200, range(100, 105))
    frame.loc[spike, "latency"] += 100.0
    return frame, spike


test_frame.__test__ = False  # a helper, not a test


def promoted_store(tmp_path, detector, **settings):
    """A store whose production model is ``detector``, holding 60 s of device r1's telemetry."""
    cfg = EyeNetConfig(metrics=METRICS, counter_metrics=[], store_uri=f"sqlite:///{tmp_path}/e.db",
                       artifact_root=str(tmp_path / "artifacts"), **settings)
    store = open_store(cfg.store_uri)
    registry = ModelRegistry(store, cfg.artifact_root)
    mv = registry.register(detector.save(tmp_path / "model"))
    registry.promote(mv.name, mv.version)
    live = telemetry(60, start_s=5000, seed=4, devices=("r1",))
    store.write_samples(live.assign(label=pd.array([None] * len(live), dtype="Int8")))
    return cfg, store, mv, live


def make_config(tmp_path: Path, **overrides) -> EyeNetConfig:
    base = {
        "store_uri": f"sqlite:///{tmp_path}/eyenet.db", "artifact_root": str(tmp_path / "artifacts"),
        "detector": {"window_steps": 10, "hidden_size": 16, "num_layers": 1, "max_epochs": 30,
                     "max_train_time_s": 20, "batch_size": 64, "learning_rate": 0.005},
        "streaming": {"devices_per_actor": 3, "feature_actors": 2, "fetch_chunk_s": 60},
        "monitor": {"check_interval_s": 1, "min_drift_samples": 300, "snapshot_interval_s": 5},
        "alerts": {"anomaly_min_points": 3, "anomaly_window_s": 60},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return EyeNetConfig.from_dict(base)
