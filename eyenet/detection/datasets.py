"""The labelled evaluation sets (SMD, NAB), read with the one metric-file reader
(:func:`eyenet.telemetry.files.read_metric_csv`), and the spacing of a history."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from eyenet.telemetry.files import read_metric_csv
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP


def sample_interval_s(frame: pd.DataFrame) -> float:
    """Median spacing of samples within devices, in seconds (1.0 when it cannot be told)."""
    ts = pd.to_datetime(frame[TIMESTAMP], utc=True)
    diffs = ts.groupby(frame[DEVICE]).diff().dt.total_seconds().dropna()
    diffs = diffs[diffs > 0]
    return float(diffs.median()) if len(diffs) else 1.0


def smd_machines(root: str | os.PathLike[str]) -> list[Path]:
    return sorted(p for p in Path(root, "smd").glob("machine-*") if (p / "train.csv.gz").exists())


def load_smd(machine_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train, test with label, metrics) of one SMD machine."""
    train, metrics = read_metric_csv(machine_dir / "train.csv.gz", device_id=machine_dir.name)
    test, _ = read_metric_csv(machine_dir / "test.csv.gz", device_id=machine_dir.name, metrics=metrics)
    return train, test, metrics


def smd_segments(machine_dir: Path) -> list[tuple[int, int, set[str]]]:
    """Labelled segments of an SMD machine's test file: [start, end) rows and blamed metrics.

    segments.csv gives inclusive row ranges and space-separated metric names."""
    path = machine_dir / "segments.csv"
    if not path.exists():
        return []
    seg = pd.read_csv(path)
    return [(int(r.start), int(r.end) + 1, set(str(r.metrics).split())) for r in seg.itertuples()]


def nab_series(root: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(root, "nab", "realAWSCloudwatch").glob("*.csv"))


def load_nab(csv_path: Path, train_fraction: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train, test, ["value"]) of one NAB series, labels from ``combined_windows.json``.

    NAB has no separate training file: the first ``train_fraction`` of the series trains
    (its labelled windows are flagged, so training leaves them out) and the rest is test.
    """
    frame, metrics = read_metric_csv(csv_path, device_id=csv_path.stem, keep_first_duplicate=True)
    windows = json.loads((csv_path.parent.parent / "combined_windows.json").read_text())
    label = np.zeros(len(frame), np.int64)
    for start, end in windows.get(f"{csv_path.parent.name}/{csv_path.name}", []):
        inside = (frame[TIMESTAMP] >= pd.Timestamp(start, tz="UTC")) & \
                 (frame[TIMESTAMP] <= pd.Timestamp(end, tz="UTC"))
        label[inside.to_numpy()] = 1
    frame[LABEL] = label
    cut = int(len(frame) * train_fraction)
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True), metrics
