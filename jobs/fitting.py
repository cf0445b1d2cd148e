"""From a history frame to a fitted detector: on Ray Train, Ray Tune, or (kinds without a
network) in this process. ``eyenet detect``, ``train`` and ``evaluate`` all fit here."""

from __future__ import annotations

from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.datasets import sample_interval_s
from eyenet.detection.detector import Detector
from eyenet.errors import ConfigError, TelemetryError


def config_for(config: EyeNetConfig, metrics: list[str], frame: pd.DataFrame) -> EyeNetConfig:
    """``config`` with the file's metrics (gauges: CSV values are already rates) and spacing."""
    interval = sample_interval_s(frame)
    data = {**config.to_dict(), "metrics": metrics, "counter_metrics": [], "metric_max": {},
            "sample_interval_s": interval}
    return EyeNetConfig.from_dict(data)


def fit_detector(train: pd.DataFrame, config: EyeNetConfig, *, source: str, tune: bool = False,
                 trials: int = 8, time_budget_s: float = 600.0, workers: int = 1, gpus: float = 0,
                 max_epochs: int | None = None,
                 tune_kw: dict[str, Any] | None = None) -> tuple[Detector, dict[str, Any]]:
    """Train on Ray (tuned or not); errors about the data name ``source``. Kinds without a
    network (pca, kmeans) fit in this process in seconds and never start Ray."""
    from jobs._ray import ensure_ray, gpus_for
    from jobs.ray_train import train_on_ray
    from jobs.ray_tune import tune_detector

    detector = Detector(config.detector, config.metrics, config.gap_s)
    if tune and not config.detector.needs_network:
        raise ConfigError(f"--tune searches the LSTM's hyperparameters; detector kind "
                          f"{config.detector.kind!r} trains no LSTM", "detector.kind", config.detector.kind)
    try:  # checks the data before Ray starts; a tuned trial prepares its own window size
        data = detector.prepare(train)
    except TelemetryError as exc:
        raise TelemetryError(f"{source}: {exc}") from exc
    if not config.detector.needs_network:
        return detector.finish(None, data), {}
    ensure_ray(config=config)
    gpus = gpus_for(config, gpus)
    storage = config.cluster.train_storage_path
    if tune:
        detector, params, trials_table = tune_detector(
            train, config, trials=trials, time_budget_s=time_budget_s, workers=workers,
            gpus=gpus, max_epochs=max_epochs, storage_path=storage, **(tune_kw or {}))
        return detector, {"tuned_params": params, "trials": trials_table}
    result = train_on_ray(detector, data, workers=workers, gpus=gpus, max_epochs=max_epochs,
                          storage_path=storage)
    return detector.finish(result, data), {}
