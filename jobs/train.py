"""``eyenet train``: history from a CSV or the store -> Ray Train (or Tune) -> registry (staging)."""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.detection.datasets import read_metric_csv
from eyenet.errors import TelemetryError
from eyenet.models.registry import ModelRegistry, ModelVersion
from eyenet.store import open_store
from jobs.detect import config_for, fit_detector
from jobs.train import flag_incidents


def run_train(args: argparse.Namespace, config: EyeNetConfig, **train_kw: Any) -> ModelVersion:
    store = open_store(config.store_uri)
    if args.train_csv:
        frame, metrics = read_metric_csv(args.train_csv)
        config, source = config_for(config, metrics, frame), args.train_csv
    else:
        frame = store.read_range(args.since, args.until, device_ids=args.device)
        source = f"store {config.store_uri} ({len(frame)} samples)"
        if frame.empty:
            raise TelemetryError(f"{source}: no samples to train on")
        frame = flag_incidents(frame, store.list_events(args.since, args.until, kind="anomaly",
                                                        limit=100_000),
                               tolerance_s=config.sample_interval_s / 2)  # the event's own sample
    detector, extra = fit_detector(frame, config, source=source, tune=args.tune, trials=args.trials,
                                   time_budget_s=args.time_budget_s, **train_kw)
    with tempfile.TemporaryDirectory() as tmp:
        detector.save(tmp)
        metrics = {"kind": detector.model.kind,
                   "best_val_loss": detector.training.get("best_val_loss"),
                   "epochs": detector.training.get("epochs"),
                   "raw_threshold": detector.calibrator.threshold,
                   **({"tuned_params": extra["tuned_params"]} if "tuned_params" in extra else {})}
        return ModelRegistry(store, config.artifact_root).register(
            tmp, name=args.name, metrics=metrics, config=config.to_dict(),
            tags={"source": str(source), "tuned": str(bool(args.tune))})
