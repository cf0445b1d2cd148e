"""Offline detection: train on one CSV, score another, write one row per test row.

``eyenet detect --train TRAIN.csv --test TEST.csv --out OUT.csv``. Training goes through
the same Ray Train path as ``eyenet train``. The test file is scored with the end of the
training file as context, so its first rows get a full window when the two are
contiguous. OUT (``timestamp,score,is_anomaly,top_feature,regime_change``, in the test file's row order)
is written to a temporary file and renamed, so a failure never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.datasets import read_metric_csv, sample_interval_s
from eyenet.detection.detector import Detector
from eyenet.errors import ConfigError, EyeNetError, TelemetryError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, to_ms


def config_for(config: EyeNetConfig, metrics: list[str], frame: pd.DataFrame) -> EyeNetConfig:
    """``config`` with the file's metrics (gauges: CSV values are already rates) and spacing."""
    interval = sample_interval_s(frame)
    data = {**config.to_dict(), "metrics": metrics, "counter_metrics": [], "metric_max": {},
            "sample_interval_s": interval, "window_s": max(config.window_s, interval)}
    return EyeNetConfig.from_dict(data)


def fit_detector(train: pd.DataFrame, config: EyeNetConfig, *, source: str, tune: bool = False,
                 trials: int = 8, time_budget_s: float = 600.0, workers: int = 1, gpus: float = 0,
                 max_epochs: int | None = None) -> tuple[Detector, dict[str, Any]]:
    """Train on Ray (tuned or not); errors about the data name ``source``. Kinds without a
    network (pca, kmeans) fit in this process in seconds and never start Ray."""
    from jobs._ray import ensure_ray
    from jobs.train import train_on_ray
    from jobs.tune import tune_detector

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
    ensure_ray()
    if tune:
        detector, params, trials_table = tune_detector(
            train, config, trials=trials, time_budget_s=time_budget_s, workers=workers,
            gpus=gpus, max_epochs=max_epochs)
        return detector, {"tuned_params": params, "trials": trials_table}
    result = train_on_ray(detector, data, workers=workers, gpus=gpus, max_epochs=max_epochs)
    return detector.finish(result, data), {}


def run_detect(train_csv: str, test_csv: str, out_csv: str, config: EyeNetConfig, **train_kw: Any) -> dict:
    started = time.perf_counter()
    train, metrics = read_metric_csv(train_csv)
    test, _ = read_metric_csv(test_csv, metrics=metrics, device_id=train[DEVICE].iloc[0])
    out_dir = Path(out_csv).resolve().parent
    if not out_dir.is_dir():
        raise EyeNetError(f"{out_csv}: directory {out_dir} does not exist")
    cfg = config_for(config, metrics, train)
    detector, extra = fit_detector(train, cfg, source=str(train_csv), **train_kw)
    # the training tail is context only when the test file follows it in time
    history = train if test[TIMESTAMP].min() > train[TIMESTAMP].max() else None
    scored = detector.score(test.drop(columns=[LABEL], errors="ignore"), history=history)
    key = pd.MultiIndex.from_arrays([scored[DEVICE].to_numpy(), to_ms(scored[TIMESTAMP]).to_numpy()])
    order = key.get_indexer(pd.MultiIndex.from_arrays(
        [test[DEVICE].astype(str).to_numpy(), to_ms(test[TIMESTAMP]).to_numpy()]))
    rows = scored.iloc[order]
    out = pd.DataFrame({"timestamp": rows[TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_numpy(),
                        "score": rows["score"].round(6).to_numpy(),
                        "is_anomaly": rows["is_anomaly"].astype(int).to_numpy(),
                        "top_feature": rows["top_feature"].to_numpy(),
                        "regime_change": rows["regime_change"].to_numpy()})
    fd, tmp = tempfile.mkstemp(prefix=".eyenet-detect-", suffix=".csv", dir=out_dir)
    os.close(fd)
    try:
        out.to_csv(tmp, index=False)
        os.replace(tmp, out_csv)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"out": str(out_csv), "rows": len(out), "anomalies": int(out["is_anomaly"].sum()),
            "regime_changes": int((out["regime_change"] != "").sum()),
            "metrics": len(metrics), "train_rows": len(train), "seconds": time.perf_counter() - started,
            "training": detector.training, **extra}


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    sys.exit(main(["detect", *sys.argv[1:]]))
