"""The store interface: telemetry, events, reports and model records behind one contract.

Two backends implement it (``SQLiteStore``, ``MongoStore``) and one contract test suite
runs on both. What both promise:

* telemetry writes are idempotent on ``(device_id, timestamp)`` at millisecond
  resolution: a retried batch never duplicates a sample, and the first value written
  wins. ``write_samples`` returns only after the batch is durable against a crash of the
  writing process, so an acknowledged batch is never lost;
* frames come back with ``device_id``, ``timestamp`` (UTC), the metric columns and
  ``label``; missing values are NaN;
* model version numbers come from an atomic counter, so concurrent registrations never
  share a number; the registry state (which version is production) changes only by
  compare-and-set, so promotions are atomic without multi-document transactions.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
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


class Store(ABC):
    """One interface, two backends. Picklable by URI so Ray workers reopen their own."""

    uri: str

    # -- telemetry ----------------------------------------------------------------------
    @abstractmethod
    def write_samples(self, frame: pd.DataFrame) -> WriteResult:
        """Insert samples idempotently; duplicates of stored (device, ts) are counted."""

    @abstractmethod
    def last_window(self, device_id: str, window_s: float = 300.0,
                    end: Any = None) -> pd.DataFrame:
        """Samples of one device in ``(end - window_s, end]``; ``end`` defaults to its
        newest sample. Sorted by time; empty if the device has none."""

    @abstractmethod
    def last_samples(self, device_ids: Sequence[str], rows: int) -> pd.DataFrame:
        """The newest ``rows`` samples of each device (all it has when fewer) in one read,
        ordered by device then time; devices without samples are absent."""

    @abstractmethod
    def iter_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None,
                   chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
        """Samples with ``start <= timestamp < end`` in chunks, ordered by device then time."""

    def read_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """All samples in a time range as one DataFrame (training input)."""
        chunks = list(self.iter_range(start, end, device_ids))
        if not chunks:
            return self._empty_frame()
        return pd.concat(chunks, ignore_index=True)

    @abstractmethod
    def list_devices(self) -> list[DeviceInfo]:
        """Every device with samples, with its sample count and time span."""

    @abstractmethod
    def count_samples(self, device_id: str | None = None) -> int: ...

    @abstractmethod
    def _empty_frame(self) -> pd.DataFrame: ...

    # -- events and reports ---------------------------------------------------------------
    @abstractmethod
    def upsert_event(self, event: Event) -> str:
        """Insert or replace the event with this ``event_id``; returns the id."""

    @abstractmethod
    def list_events(self, since: Any = None, until: Any = None, device_id: str | None = None,
                    kind: str | None = None, status: str | None = None,
                    limit: int = 1000) -> list[Event]:
        """Newest first."""

    @abstractmethod
    def save_report(self, report: dict[str, Any]) -> str:
        """Store a JSON-able report; returns its id (``report["report_id"]`` if given)."""

    @abstractmethod
    def get_report(self, report_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def list_reports(self, limit: int = 100, kind: str | None = None, since: Any = None,
                     until: Any = None) -> list[dict[str, Any]]:
        """Newest first; ``kind`` matches ``report["kind"]``, ``since <= created_at < until``."""

    # -- component state (collector cursors, monitor state) ------------------------------------
    @abstractmethod
    def put_state(self, key: str, value: dict[str, Any]) -> None:
        """Replace the JSON-able state saved under ``key`` (a restarted actor reads it back)."""

    @abstractmethod
    def get_state(self, key: str) -> dict[str, Any] | None:
        """The state saved under ``key``, or None."""

    # -- model records (used by eyenet.models.registry) ------------------------------------------
    @abstractmethod
    def allocate_model_version(self, name: str) -> int:
        """Atomically the next version number of ``name`` (1, 2, ...); never reused."""

    @abstractmethod
    def insert_model_record(self, record: dict[str, Any]) -> None:
        """Store a new version record (keys ``name`` and ``version`` are unique)."""

    @abstractmethod
    def update_model_record(self, name: str, version: int, fields: dict[str, Any]) -> None: ...

    @abstractmethod
    def get_model_record(self, name: str, version: int) -> dict[str, Any] | None: ...

    @abstractmethod
    def list_model_records(self, name: str | None = None) -> list[dict[str, Any]]:
        """Ordered by name, then version."""

    @abstractmethod
    def get_registry_state(self, name: str) -> tuple[dict[str, Any], int]:
        """The registry state of ``name`` and its revision (0 when never written)."""

    @abstractmethod
    def compare_and_set_registry_state(self, name: str, expected_rev: int,
                                       state: dict[str, Any]) -> bool:
        """Write ``state`` as revision ``expected_rev + 1`` only if the stored revision is
        still ``expected_rev``; False when another writer got there first."""

    # -- lifecycle ------------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreConnectionError` when the store cannot be reached."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_uri(self.uri)!r})"
