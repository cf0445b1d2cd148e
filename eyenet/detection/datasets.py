"""Reading metric CSVs (``eyenet detect``) and the labelled evaluation sets (SMD, NAB).

A metric CSV has a ``timestamp`` column and one numeric column per metric; ``label`` and
``device_id`` columns are optional. Everything wrong with a file is reported as a
:class:`TelemetryError` naming the file and the column or row, before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP

NON_METRIC_COLUMNS = (TIMESTAMP, LABEL, DEVICE)


def read_metric_csv(path: str | os.PathLike[str], *, device_id: str = "series",
                    metrics: list[str] | None = None,
                    keep_first_duplicate: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Load and check one metric CSV; returns (frame with device_id, metric names).

    A repeated timestamp is an error, unless ``keep_first_duplicate`` (the telemetry
    schema's rule: the first sample wins), which the public datasets need: NAB repeats
    the hour that daylight saving time repeats.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise TelemetryError(f"{path}: no such file") from exc
    except pd.errors.EmptyDataError as exc:
        raise TelemetryError(f"{path}: the file is empty") from exc
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TelemetryError(f"{path}: cannot be read as CSV: {exc}") from exc
    if TIMESTAMP not in frame.columns:
        raise TelemetryError(f"{path}: no {TIMESTAMP!r} column (columns: {list(frame.columns)})")
    if frame.empty:
        raise TelemetryError(f"{path}: has a header but no rows")
    found = [c for c in frame.columns if c not in NON_METRIC_COLUMNS]
    if metrics is None:
        metrics = found
    missing = [m for m in metrics if m not in frame.columns]
    if missing:
        raise TelemetryError(f"{path}: missing metric column(s) {missing}")
    if not metrics:
        raise TelemetryError(f"{path}: no metric columns besides {list(NON_METRIC_COLUMNS)}")
    for col in metrics:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TelemetryError(f"{path}: column {col!r} row {row + 2} holds {frame[col].iloc[row]!r}, "
                                 "not a number")  # +2: header line and 1-based rows
        frame[col] = values
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True, errors="coerce", format="mixed")
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise TelemetryError(f"{path}: column {TIMESTAMP!r} row {row + 2} holds "
                             f"{frame[TIMESTAMP].iloc[row]!r}, not a timestamp")
    frame[TIMESTAMP] = stamps
    keys = [DEVICE, TIMESTAMP] if DEVICE in frame.columns else [TIMESTAMP]
    repeated = frame.duplicated(keys)
    if repeated.any() and keep_first_duplicate:
        frame = frame[~repeated].reset_index(drop=True)
    elif repeated.any():
        row = int(np.flatnonzero(repeated.to_numpy())[0])
        raise TelemetryError(f"{path}: row {row + 2} repeats timestamp {frame[TIMESTAMP].iloc[row]}")
    numeric = frame[metrics]
    if (numeric.nunique(dropna=True) <= 1).all():
        raise TelemetryError(f"{path}: every metric column is constant ({metrics}); "
                             "there is nothing to learn")
    if DEVICE not in frame.columns:
        frame[DEVICE] = device_id
    return frame[[DEVICE, TIMESTAMP, *metrics, *([LABEL] if LABEL in frame.columns else [])]], metrics


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
