"""Reading recorded telemetry files: one reader for replay, ``eyenet detect`` and ``train``.

A file is CSV (optionally gzipped) or Parquet with a ``timestamp`` column (ISO 8601, or
numbers meaning epoch seconds, naive times meaning UTC: :func:`parse_timestamps`, the
validator's own rule) and one column per metric; ``label`` and ``device_id`` are optional.
Everything wrong with the file's structure is a :class:`TelemetryError` naming the file
and the column or line, before anything is written; what is wrong with single samples is
the validator's call (:func:`eyenet.telemetry.validation.validate_history`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, parse_timestamps

HEADER_LINES = 1  # a CSV's line number is its row index + 1 + this


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The file as a frame, checked to have a ``timestamp`` column and at least one row."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path) if path.name.endswith(".parquet") else pd.read_csv(path)
    except FileNotFoundError as exc:
        raise TelemetryError(f"{path}: no such file") from exc
    except pd.errors.EmptyDataError as exc:
        raise TelemetryError(f"{path}: the file is empty") from exc
    except (OSError, ValueError, UnicodeDecodeError, ImportError) as exc:  # ParserError is a ValueError
        kind = "Parquet" if path.name.endswith(".parquet") else "CSV"
        raise TelemetryError(f"{path}: cannot be read as {kind}: {exc}") from exc
    if TIMESTAMP not in frame.columns:
        raise TelemetryError(f"{path}: no {TIMESTAMP!r} column (columns: {list(frame.columns)})")
    if frame.empty:
        raise TelemetryError(f"{path}: has a header but no rows")
    return frame


def line_of(row: int) -> int:
    """The file line a 0-based row is on, as an editor shows it."""
    return row + 1 + HEADER_LINES


def timestamps_of(path: Path, frame: pd.DataFrame) -> pd.Series:
    """The frame's timestamps as UTC; the first one that is not a time is an error naming it."""
    stamps = parse_timestamps(frame[TIMESTAMP])
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise TelemetryError(f"{path}: column {TIMESTAMP!r} line {line_of(row)} holds "
                             f"{frame[TIMESTAMP].iloc[row]!r}, not a timestamp")
    return stamps


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
    frame = read_table(path)
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
            raise TelemetryError(f"{path}: column {col!r} line {line_of(row)} holds "
                                 f"{frame[col].iloc[row]!r}, not a number")
        frame[col] = values
    frame[TIMESTAMP] = timestamps_of(path, frame)
    keys = [DEVICE, TIMESTAMP] if DEVICE in frame.columns else [TIMESTAMP]
    repeated = frame.duplicated(keys)
    if repeated.any() and keep_first_duplicate:
        frame = frame[~repeated].reset_index(drop=True)
    elif repeated.any():
        row = int(np.flatnonzero(repeated.to_numpy())[0])
        raise TelemetryError(f"{path}: line {line_of(row)} repeats timestamp {frame[TIMESTAMP].iloc[row]}")
    numeric = frame[metrics]
    if (numeric.nunique(dropna=True) <= 1).all():
        raise TelemetryError(f"{path}: every metric column is constant ({metrics}); "
                             "there is nothing to learn")
    if DEVICE not in frame.columns:
        frame[DEVICE] = device_id
    return frame[[DEVICE, TIMESTAMP, *metrics, *([LABEL] if LABEL in frame.columns else [])]], metrics
