"""``eyenet train`` / ``python -m jobs.train``: history from a CSV or the store -> Ray Train
(or Tune) -> registry (staging).

A CSV goes through the same telemetry validation as ingest (:func:`read_metric_csv`), so
the model trains on exactly what serving will see. Samples near anomaly events already in
the store are labelled and left out of training, so found incidents are not learned as
normal.

From the store, the LSTM (``detector.kind: lstm``, not ``--tune``) trains without the
driver ever holding the fleet's history (:mod:`jobs.train_store`: fitted device by device,
windows built inside Ray Data tasks, calibrated on a bounded tail per device). Kinds without
a network (pca, kmeans, isolation_forest), the ensemble (its in-process members fit on the
whole window set) and ``--tune`` (each trial prepares its own window size) read the history
into one frame and fit as a CSV does: they fit in this process, so the frame must fit in
its memory.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.detection.fit_by_device import flag_spans, incident_spans
from eyenet.errors import TelemetryError
from eyenet.models.registry import ModelRegistry, ModelVersion
from eyenet.store import open_store
from eyenet.telemetry.files import read_metric_csv
from eyenet.telemetry.validation import ValidationResult, validate_history
from jobs.fitting import config_for, fit_detector
from jobs.options import TrainOptions, job_main
from jobs.train_store import fit_from_store


def run_train(config: EyeNetConfig, options: TrainOptions,
              tune_kw: dict[str, Any] | None = None) -> ModelVersion:
    """``tune_kw``: with ``--tune``, more of :func:`jobs.ray_tune.tune_detector`'s options
    (a progress hook, a search space)."""
    store = open_store(config.store_uri)
    if options.train_csv:
        frame, metrics = read_metric_csv(options.train_csv)
        config, source = config_for(config, metrics, frame), options.train_csv
        checked = validate_history(frame, config, source)
        frame = checked.accepted
        report_validation(source, checked)
    elif config.detector.kind == "lstm" and not options.tune:
        source = f"store {config.store_uri}"
        detector = fit_from_store(store, config, devices=options.device, since=options.since,
                                  until=options.until, **options.train_kw)
        return register(store, config, options, detector, {}, source)
    else:
        frame = store.read_range(options.since, options.until, device_ids=options.device)
        source = f"store {config.store_uri} ({len(frame)} samples)"
        if frame.empty:
            raise TelemetryError(f"{source}: no samples to train on")
        frame = flag_incidents(frame, store.list_events(options.since, options.until, kind="anomaly",
                                                        limit=100_000),
                               tolerance_s=config.sample_interval_s / 2)  # the event's own sample
    detector, extra = fit_detector(frame, config, source=source, tune=options.tune, trials=options.trials,
                                   time_budget_s=options.time_budget_s, tune_kw=tune_kw,
                                   **options.train_kw)
    return register(store, config, options, detector, extra, source)


def register(store: Any, config: EyeNetConfig, options: TrainOptions, detector: Detector,
             extra: dict[str, Any], source: str) -> ModelVersion:
    """Save the fitted detector as a staging version, its training figures as metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        detector.save(tmp)
        metrics = {"kind": detector.model.kind,
                   "best_val_loss": detector.training.get("best_val_loss"),
                   "epochs": detector.training.get("epochs"),
                   "raw_threshold": detector.calibrator.threshold,
                   **({"tuned_params": extra["tuned_params"]} if "tuned_params" in extra else {})}
        return ModelRegistry(store, config.artifact_root).register(
            tmp, name=options.name, metrics=metrics, config=config.to_dict(),
            tags={"source": str(source), "tuned": str(bool(options.tune))})


def flag_incidents(frame: pd.DataFrame, events: list[Any], tolerance_s: float) -> pd.DataFrame:
    """Label samples within ``tolerance_s`` of a stored anomaly event of their device as 1,
    so training leaves out the windows around incidents already found (the same spans the
    device-by-device path flags)."""
    return flag_spans(frame, incident_spans(events, tolerance_s))


def report_validation(source: str, checked: ValidationResult) -> None:
    """Say what the ingest rules repaired or rejected in a file, as ingest's summary does."""
    counts = {**{f"repaired {k}": v for k, v in checked.repaired_counts.items()},
              **{f"rejected {k}": v for k, v in checked.rejected_counts.items()}}
    if counts:
        print(f"{source}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)


def main(config: EyeNetConfig, options: TrainOptions) -> int:
    mv = run_train(config, options)
    print(f"registered {mv.name} v{mv.version} ({mv.state}): {json.dumps(mv.metrics, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(TrainOptions, main, prog="python -m jobs.train", description=__doc__))
