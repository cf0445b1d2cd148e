"""``eyenet train --from-store`` for the LSTM: the driver never holds the fleet's history.

The driver reads one device's history at a time (:func:`prepare_from_store`) to fit what
:meth:`Detector.prepare` fits (:class:`eyenet.detection.fit_by_device.DeviceFit`); the
training and validation windows are read and built inside Ray Data tasks, one device time
span per task (:func:`jobs.ray_train.store_split_datasets`), and fed to the TorchTrainer;
calibration scores each device's held-out tail in the driver, a bounded number of rows per
device (:func:`eyenet.detection.fit_by_device.calibrate_by_device`). The driver's memory is
one device's history plus a fixed-size fleet sample, whatever the fleet's size.

Samples near a stored anomaly event of their device are flagged in the driver and in the
tasks alike, so training leaves found incidents out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.detection.fit_by_device import (
    DeviceFit,
    DeviceSplit,
    calibrate_by_device,
    flag_spans,
    incident_spans,
)
from eyenet.errors import TelemetryError
from eyenet.store.protocols import EventStore, TelemetryStore

# One Ray Data task reads this much of one device's history: a day is 86,400 samples at
# 1 s, a few MB per task, and a long history still spreads over many tasks.
SPAN_MS = 86_400_000
EVENT_LIMIT = 100_000


@dataclass
class StorePlan:
    """What the driver fitted and how to read the history again."""

    fit: DeviceFit
    splits: list[DeviceSplit]
    incidents: dict[str, list[tuple[int, int]]]
    read_device: Callable[[str], pd.DataFrame]


def prepare_from_store(store: Any, detector: Detector, config: EyeNetConfig, *,
                       devices: list[str] | None = None, since: Any = None, until: Any = None,
                       source: str = "store") -> StorePlan:
    """Fit ``detector``'s scaler, regime noise, drift reference and spacing device by
    device; every read names one device. ``store`` is a TelemetryStore and EventStore."""
    telemetry: TelemetryStore = store
    events: EventStore = store
    ids = sorted(set(devices)) if devices else [d.device_id for d in telemetry.list_devices()]
    if not ids:
        raise TelemetryError(f"{source}: no devices to train on")
    incidents = incident_spans(events.list_events(since, until, kind="anomaly", limit=EVENT_LIMIT),
                               tolerance_s=config.sample_interval_s / 2)  # the event's own sample

    def read_device(device_id: str) -> pd.DataFrame:
        frame = telemetry.read_range(since, until, device_ids=[device_id])
        return flag_spans(frame, incidents)

    fit = DeviceFit(detector)
    try:
        for device_id in sorted(ids):
            fit.add(device_id, read_device(device_id))
        if fit.rows == 0:
            raise TelemetryError("no samples to train on")
        splits = fit.finish(read_device)
    except TelemetryError as exc:
        raise TelemetryError(f"{source}: {exc}") from exc
    return StorePlan(fit, splits, incidents, read_device)


def fit_from_store(store: Any, config: EyeNetConfig, *, devices: list[str] | None = None,
                   since: Any = None, until: Any = None, workers: int = 1, gpus: float = 0,
                   max_epochs: int | None = None) -> Detector:
    """Prepare in the driver, train on Ray from Ray Data datasets read in tasks, calibrate."""
    from jobs._ray import ensure_ray, gpus_for
    from jobs.ray_train import store_split_datasets, train_datasets_on_ray

    source = f"store {config.store_uri}"
    detector = Detector(config.detector, config.metrics, config.gap_s)
    plan = prepare_from_store(store, detector, config, devices=devices, since=since, until=until,
                              source=source)
    ensure_ray(config=config)
    gpus = gpus_for(config, gpus)
    datasets = store_split_datasets(config.store_uri, detector, plan.splits, SPAN_MS, plan.incidents)
    result = train_datasets_on_ray(detector, datasets, len(detector.feature_names), workers=workers,
                                   gpus=gpus, max_epochs=max_epochs,
                                   storage_path=config.cluster.train_storage_path)
    try:
        return calibrate_by_device(detector, result, plan.splits, plan.read_device, plan.fit.flagged_rows)
    except TelemetryError as exc:
        raise TelemetryError(f"{source}: {exc}") from exc
