"""The telemetry schema: column names, timestamps in epoch milliseconds, frames from records.

A sample is ``device_id``, a UTC ``timestamp``, one value per configured metric and an
optional ``label`` (0/1). Frames are pandas DataFrames with exactly those columns. What
happens to a sample that breaks the rules is :mod:`eyenet.telemetry.validation`'s call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from eyenet.errors import TelemetryError

DEVICE = "device_id"
TIMESTAMP = "timestamp"
LABEL = "label"


def to_ms(timestamps: pd.Series) -> pd.Series:
    """UTC timestamps (any pandas resolution) as integer epoch milliseconds.

    Rounded, not truncated: float epoch seconds such as 1.001 land a hair below the
    millisecond, and flooring would make distinct samples collide."""
    ns = timestamps.dt.as_unit("ns").astype("int64").to_numpy()
    return pd.Series((ns + 500_000) // 1_000_000, index=timestamps.index)


def ms_of(timestamp: pd.Timestamp | str) -> int:
    """One timestamp as epoch milliseconds, by :func:`to_ms`'s rounding rule."""
    return (pd.Timestamp(timestamp).as_unit("ns").value + 500_000) // 1_000_000


def from_ms(ms: Iterable[int] | np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(ms, dtype="int64"), unit="ms", utc=True)


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Parse timestamps to UTC. Numbers are epoch seconds; naive text/datetimes are UTC.

    Unparsable entries become NaT (the validator rejects them with ``bad_timestamp``).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
        if getattr(ts.dt, "tz", None) is None:
            return ts.dt.tz_localize("UTC")
        return ts.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return pd.to_datetime(values.astype("float64"), unit="s", utc=True, errors="coerce")
    if values.map(lambda v: isinstance(v, str)).all():  # the common file case: try ISO text in one go
        try:
            return pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            pass
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    numeric = pd.to_numeric(values, errors="coerce")
    is_num = numeric.notna() & values.map(lambda v: isinstance(v, (int, float, np.number)))
    if is_num.any():
        out[is_num] = pd.to_datetime(numeric[is_num], unit="s", utc=True, errors="coerce")
    rest = ~is_num & values.notna()
    if rest.any():
        out[rest] = pd.to_datetime(values[rest].astype(str), utc=True, errors="coerce",
                                   format="mixed")
    return out


def frame_from_records(records: Iterable[Mapping[str, Any]] | pd.DataFrame,
                       metrics: list[str]) -> pd.DataFrame:
    """Samples (a DataFrame or an iterable of mappings) as a raw frame with the schema's columns.

    A DataFrame must have every schema column (a missing column is a structural error:
    :class:`TelemetryError` naming it). Mappings may omit metrics, which then count as
    ``metric_missing``. Extra columns are left out of the frame (see ``ignored_columns``).
    """
    if isinstance(records, pd.DataFrame):
        missing = [c for c in (DEVICE, TIMESTAMP, *metrics) if c not in records.columns]
        if missing:
            raise TelemetryError(
                f"telemetry frame lacks column(s) {missing}; expected {DEVICE}, {TIMESTAMP}, "
                f"{', '.join(metrics)} and optionally {LABEL}; got {list(records.columns)}")
        frame = records
    else:
        rows = list(records)
        bad = [i for i, r in enumerate(rows) if not isinstance(r, Mapping)]
        if bad:
            raise TelemetryError(f"sample #{bad[0]} is a {type(rows[bad[0]]).__name__}, "
                                 "expected a mapping of field -> value")
        frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    columns = [DEVICE, TIMESTAMP, *metrics, LABEL]
    return frame.reindex(columns=columns).reset_index(drop=True)
