"""The store's contract as four small protocols, and :class:`Store`, their union.

Code that needs one part of the store is typed against that part, so a reader sees what
it touches and a test can hand it a small fake:

* :class:`TelemetryStore`: samples in (idempotent batch writes) and out (last windows,
  each device's newest rows, chunked range reads), and the devices the samples name;
* :class:`EventStore`: events (alerts, promotions, rejected batches) and reports;
* :class:`ModelStore`: model version records and the registry state of each model name;
* :class:`ComponentStateStore`: the JSON state a component saves so that it resumes after a
  restart (collector cursors, the monitor's windows, per-device scaling).

Both backends (``SQLiteStore``, ``MongoStore``) implement all four; :func:`eyenet.store.open_store`
returns a :class:`Store`. One contract suite per protocol runs on every backend. What the
backends promise:

* telemetry writes are idempotent on ``(device_id, timestamp)`` at millisecond
  resolution: a retried batch never duplicates a sample, and the first value written
  wins. ``write_samples`` returns only after the batch is durable against a crash of the
  writing process, so an acknowledged batch is never lost;
* frames come back with ``device_id``, ``timestamp`` (UTC), the metric columns and
  ``label``; missing values are NaN;
* model version numbers come from an atomic counter, so concurrent registrations never
  share a number; the registry state (which version is production) changes only by
  compare-and-set, so promotions are atomic without multi-document transactions.

The protocols are ``runtime_checkable`` so the contract suites can check that a backend
has every member; the backends also subclass them, which makes a missing method an error
when the class is instantiated rather than when it is first called.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from eyenet.store.base import DeviceInfo, Event, WriteResult, redact_uri


@runtime_checkable
class TelemetryStore(Protocol):
    """Samples keyed ``(device_id, timestamp)``: written idempotently, read by window or range."""

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
        """Samples with ``start <= timestamp < end`` in chunks of at most ``chunk_rows``,
        ordered by device then time."""

    @abstractmethod
    def read_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """All samples in a time range as one DataFrame (training input); with none, an
        empty frame with at least ``device_id``, ``timestamp`` and ``label``."""

    @abstractmethod
    def list_devices(self) -> list[DeviceInfo]:
        """Every device with samples, with its sample count and time span."""

    @abstractmethod
    def count_samples(self, device_id: str | None = None) -> int:
        """Samples stored, of one device or of all."""


@runtime_checkable
class EventStore(Protocol):
    """Events an operator should see (alerts are events) and JSON reports."""

    @abstractmethod
    def upsert_event(self, event: Event) -> str:
        """Insert or replace the event with this ``event_id``; returns the id."""

    @abstractmethod
    def list_events(self, since: Any = None, until: Any = None, device_id: str | None = None,
                    kind: str | None = None, status: str | None = None,
                    limit: int = 1000) -> list[Event]:
        """Newest first; ``since <= ts < until``."""

    @abstractmethod
    def save_report(self, report: dict[str, Any]) -> str:
        """Store a JSON-able report; returns its id (``report["report_id"]`` if given)."""

    @abstractmethod
    def get_report(self, report_id: str) -> dict[str, Any] | None:
        """The report saved under ``report_id``, or None."""

    @abstractmethod
    def list_reports(self, limit: int = 100, kind: str | None = None, since: Any = None,
                     until: Any = None) -> list[dict[str, Any]]:
        """Newest first; ``kind`` matches ``report["kind"]``, ``since <= created_at < until``."""


@runtime_checkable
class ModelStore(Protocol):
    """Model version records and registry state (used by :mod:`eyenet.models.registry`)."""

    @abstractmethod
    def allocate_model_version(self, name: str) -> int:
        """Atomically the next version number of ``name`` (1, 2, ...); never reused."""

    @abstractmethod
    def insert_model_record(self, record: dict[str, Any]) -> None:
        """Store a new version record (keys ``name`` and ``version`` are unique)."""

    @abstractmethod
    def update_model_record(self, name: str, version: int, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the record; a StoreError names the version if it is absent."""

    @abstractmethod
    def get_model_record(self, name: str, version: int) -> dict[str, Any] | None:
        """The record of ``name`` v``version``, or None."""

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


@runtime_checkable
class ComponentStateStore(Protocol):
    """JSON state a component keeps across restarts, one document per key."""

    @abstractmethod
    def put_state(self, key: str, value: dict[str, Any]) -> None:
        """Replace the JSON-able state saved under ``key`` (a restarted actor reads it back)."""

    @abstractmethod
    def get_state(self, key: str) -> dict[str, Any] | None:
        """The state saved under ``key``, or None."""


@runtime_checkable
class Store(TelemetryStore, EventStore, ModelStore, ComponentStateStore, Protocol):
    """Every part, plus the lifecycle: what :func:`eyenet.store.open_store` returns.

    Picklable by URI so Ray workers reopen their own connection.
    """

    uri: str

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreConnectionError` when the store cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; a forked or unpickled copy holds its own."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_uri(self.uri)!r})"


__all__ = ["ComponentStateStore", "EventStore", "ModelStore", "Store", "TelemetryStore"]
