"""What both store backends share: the records they hold and the checks they apply.

The interface itself is in :mod:`eyenet.store.protocols`; this module holds the values that
cross it (:class:`WriteResult`, :class:`DeviceInfo`, :class:`Event`) and the helpers both
backends call, so that SQLite and MongoDB refuse the same frames with the same messages.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, parse_timestamps, to_ms

RESERVED_COLUMNS = {DEVICE, TIMESTAMP, LABEL}


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one batch write: new samples, and samples the store already held."""

    inserted: int
    duplicates: int


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    n_samples: int
    first_ts: datetime
    last_ts: datetime


@dataclass
class Event:
    """Something worth an operator's attention (an alert, a promotion, a rejected batch).

    ``event_id`` makes writes idempotent: writing the same id again replaces the event,
    which is how an alert is later resolved.
    """

    kind: str
    message: str
    severity: str = "warning"
    device_id: str | None = None
    metrics: list[str] = field(default_factory=list)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "open"
    payload: dict[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        data = dict(data)
        ts = data.get("ts")
        if isinstance(ts, datetime) and ts.tzinfo is None:
            data["ts"] = ts.replace(tzinfo=UTC)  # BSON datetimes come back naive UTC
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, for logs and error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in RESERVED_COLUMNS]


@dataclass
class PreparedSamples:
    """A checked batch as plain columns: what both backends turn into rows or documents."""

    device_id: list[str]
    ts_ms: list[int]
    label: list[int | None]
    values: dict[str, list[float | None]]  # NaN already None: neither store keeps NaN

    def __len__(self) -> int:
        return len(self.device_id)


def prepare_samples(frame: pd.DataFrame) -> tuple[PreparedSamples, list[str]]:
    """Check a frame of validated samples and convert it to plain columns.

    The store is not the validator: it refuses structurally wrong frames loudly instead
    of guessing, so nothing is silently dropped on the way in. Hot path (every batch a
    collector writes): numpy throughout, no per-row pandas work.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TelemetryError(f"write_samples takes a DataFrame, got {type(frame).__name__}")
    for col in (DEVICE, TIMESTAMP):
        if col not in frame.columns:
            raise TelemetryError(f"samples lack the {col!r} column; got {list(frame.columns)}")
    metrics = metric_columns(frame)
    if not metrics:
        raise TelemetryError("samples have no metric columns")
    ts = parse_timestamps(frame[TIMESTAMP])
    if ts.isna().any():
        row = int(ts.isna().to_numpy().argmax())
        raise TelemetryError(f"row {row}: timestamp {frame[TIMESTAMP].iloc[row]!r} is not a time")
    device = frame[DEVICE].to_numpy(dtype=object)
    blank = pd.isna(device) | (device == "")
    if blank.any():
        raise TelemetryError(f"row {int(blank.argmax())}: device_id is missing")
    values = {}
    for m in metrics:
        col = frame[m]
        if col.dtype != np.float64:
            try:
                col = pd.to_numeric(col, errors="raise").astype("float64")
            except (ValueError, TypeError) as exc:
                raise TelemetryError(f"metric column {m!r} is not numeric: {exc}") from exc
        values[m] = _nullable(col.to_numpy(dtype="float64"))
    if LABEL in frame.columns:
        label = pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        labels = _nullable(label, as_int=True)
    else:
        labels = [None] * len(frame)
    return PreparedSamples([str(d) for d in device], to_ms(ts).tolist(), labels, values), metrics


def _nullable(values: np.ndarray, as_int: bool = False) -> list[Any]:
    missing = ~np.isfinite(values)
    if not missing.any():
        return values.astype(np.int64).tolist() if as_int else values.tolist()
    out = (np.where(missing, 0, values).astype(np.int64) if as_int else values).astype(object)
    out[missing] = None
    return out.tolist()


def stamp_report(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` with ``report_id`` and ``created_at`` filled in if absent."""
    report = dict(report)
    report.setdefault("report_id", uuid.uuid4().hex[:16])
    report.setdefault("created_at", datetime.now(UTC).isoformat())
    return report


def to_timestamp_ms(value: Any) -> int:
    """A point in time (datetime, pandas Timestamp, ISO text, epoch seconds) as epoch ms."""
    ts = parse_timestamps(pd.Series([value]))
    if ts.isna().iloc[0]:
        raise TelemetryError(f"{value!r} is not a point in time")
    return int(to_ms(ts).iloc[0])
