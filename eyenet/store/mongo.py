"""MongoDB backend: the production store, through pymongo.

Collections follow the seed: ``network_metrics`` (one document per sample, flat metric
fields, unique compound index on ``(device_id, timestamp)``), ``models``, ``events`` and
``ml_metrics.reports``; plus ``model_counters`` and ``registry_state`` for the registry.

Idempotency comes from the unique index: a batch is ``insert_many(ordered=False)``, and
duplicate-key errors (code 11000) are counted as duplicates rather than failures, so a
retried batch completes without duplicating anything. Atomic operations on a single
document (``$inc`` counters, compare-and-set on a revision) give the registry its
guarantees without multi-document transactions, which need a replica set.

The default write concern is ``w=1`` with journaling off the server's default; put
``w=majority&journal=true`` in the URI where acknowledged must mean replicated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    PyMongoError,
)

from eyenet.errors import StoreConnectionError, StoreError, TelemetryError
from eyenet.store.base import (
    RESERVED_COLUMNS,
    DeviceInfo,
    Event,
    WriteResult,
    prepare_samples,
    redact_uri,
    stamp_report,
    to_timestamp_ms,
)
from eyenet.store.protocols import Store
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP

DUPLICATE_KEY = 11000
DEFAULT_DB = "eyenet"


class MongoStore(Store):
    """``client`` may be passed in (tests pass a ``mongomock.MongoClient``)."""

    def __init__(self, uri: str, client: Any = None, server_timeout_ms: int = 5000) -> None:
        self.uri = uri
        self._injected = client is not None
        try:
            self.client = client or pymongo.MongoClient(
                uri, serverSelectionTimeoutMS=server_timeout_ms, tz_aware=True)
            self.db = self.client.get_default_database(default=DEFAULT_DB)
        except PyMongoError as exc:
            raise StoreError(f"cannot open MongoDB store {redact_uri(uri)}: {exc}") from exc
        self.metrics_c = self.db["network_metrics"]
        self.events_c = self.db["events"]
        self.reports_c = self.db["ml_metrics.reports"]
        self.models_c = self.db["models"]
        self.counters_c = self.db["model_counters"]
        self.state_c = self.db["registry_state"]
        self.component_state_c = self.db["component_state"]
        with self._errors("create indexes"):
            self.metrics_c.create_index([(DEVICE, ASCENDING), (TIMESTAMP, ASCENDING)], unique=True,
                                        name="device_time")
            self.events_c.create_index([("ts", DESCENDING)], name="events_ts")
            self.models_c.create_index([("name", ASCENDING), ("version", ASCENDING)], unique=True,
                                       name="name_version")

    def __reduce__(self) -> tuple[Any, ...]:
        if self._injected:
            raise TypeError("a MongoStore built on an injected client cannot be pickled")
        return (MongoStore, (self.uri,))

    def _errors(self, op: str) -> Any:
        return _MongoErrors(op, self.uri)

    def ping(self) -> None:
        with self._errors("ping"):
            self.client.admin.command("ping")

    def close(self) -> None:
        if not self._injected:
            self.client.close()

    # -- telemetry ------------------------------------------------------------------------
    def write_samples(self, frame: pd.DataFrame) -> WriteResult:
        prepared, metrics = prepare_samples(frame)
        if not len(prepared):
            return WriteResult(0, 0)
        docs = []
        for i, (device, ts_ms) in enumerate(zip(prepared.device_id, prepared.ts_ms, strict=True)):
            doc = {DEVICE: device, TIMESTAMP: _from_ms(ts_ms), LABEL: prepared.label[i]}
            for m in metrics:
                doc[m] = prepared.values[m][i]
            docs.append(doc)
        duplicates = 0
        try:
            with self._errors("write samples"):
                try:
                    self.metrics_c.insert_many(docs, ordered=False)
                except BulkWriteError as exc:
                    errors = exc.details.get("writeErrors", [])
                    other = [e for e in errors if e.get("code") != DUPLICATE_KEY]
                    if other or exc.details.get("writeConcernErrors"):
                        raise
                    duplicates = len(errors)
        finally:
            for doc in docs:  # insert_many adds _id to the caller's dicts
                doc.pop("_id", None)
        return WriteResult(len(docs) - duplicates, duplicates)

    def _frame(self, docs: list[dict[str, Any]], metrics: list[str] | None = None) -> pd.DataFrame:
        if metrics is None:
            seen: dict[str, None] = {}
            for doc in docs:
                for k in doc:
                    if k not in RESERVED_COLUMNS and k != "_id":
                        seen.setdefault(k)
            metrics = sorted(seen)
        out = pd.DataFrame({
            DEVICE: pd.Series([d[DEVICE] for d in docs], dtype=object).astype(str),
            TIMESTAMP: pd.to_datetime([_utc(d[TIMESTAMP]) for d in docs], utc=True),
        })
        for m in metrics:
            out[m] = pd.Series([d.get(m) for d in docs], dtype="object").astype("float64")
        out[LABEL] = pd.Series([d.get(LABEL) for d in docs], dtype="object").astype("Int8")
        return out

    def last_window(self, device_id: str, window_s: float = 300.0, end: Any = None) -> pd.DataFrame:
        if not window_s > 0:
            raise StoreError(f"window_s must be > 0, got {window_s!r}")
        with self._errors("read last window"):
            if end is None:
                newest = self.metrics_c.find_one({DEVICE: device_id}, sort=[(TIMESTAMP, DESCENDING)])
                if newest is None:
                    return self._frame([])
                end_ms = to_timestamp_ms(_utc(newest[TIMESTAMP]))
            else:
                end_ms = to_timestamp_ms(end)
            start = _from_ms(end_ms - int(window_s * 1000))
            docs = list(self.metrics_c.find(
                {DEVICE: device_id, TIMESTAMP: {"$gt": start, "$lte": _from_ms(end_ms)}},
                sort=[(TIMESTAMP, ASCENDING)]))
        return self._frame(docs)

    def last_samples(self, device_ids: Sequence[str], rows: int) -> pd.DataFrame:
        if not int(rows) >= 1:
            raise TelemetryError(f"rows must be >= 1, got {rows!r}")
        docs: list[dict[str, Any]] = []
        with self._errors("read last samples"):
            for device in sorted(set(map(str, device_ids))):  # each an indexed, limited read
                newest = self.metrics_c.find({DEVICE: device}, sort=[(TIMESTAMP, DESCENDING)],
                                             limit=int(rows))
                docs += reversed(list(newest))
        return self._frame(docs)

    def iter_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None,
                   chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
        query = _time_query(TIMESTAMP, start, end)
        if device_ids is not None:
            query[DEVICE] = {"$in": list(device_ids)}
        with self._errors("read range"):
            cursor = self.metrics_c.find(query, sort=[(DEVICE, ASCENDING), (TIMESTAMP, ASCENDING)])
            batch: list[dict[str, Any]] = []
            for doc in cursor:
                batch.append(doc)
                if len(batch) >= chunk_rows:
                    yield self._frame(batch)
                    batch = []
            if batch:
                yield self._frame(batch)

    def read_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None) -> pd.DataFrame:
        chunks = list(self.iter_range(start, end, device_ids))
        if not chunks:
            return self._frame([])
        return pd.concat(chunks, ignore_index=True)

    def list_devices(self) -> list[DeviceInfo]:
        with self._errors("list devices"):
            rows = list(self.metrics_c.aggregate([
                {"$group": {"_id": f"${DEVICE}", "n": {"$sum": 1},
                            "lo": {"$min": f"${TIMESTAMP}"}, "hi": {"$max": f"${TIMESTAMP}"}}},
                {"$sort": {"_id": 1}}]))
        return [DeviceInfo(r["_id"], int(r["n"]), _utc(r["lo"]), _utc(r["hi"])) for r in rows]

    def count_samples(self, device_id: str | None = None) -> int:
        with self._errors("count samples"):
            return self.metrics_c.count_documents({} if device_id is None else {DEVICE: device_id})

    # -- events and reports -------------------------------------------------------------------
    def upsert_event(self, event: Event) -> str:
        doc = event.to_dict()
        doc["ts"] = _utc(event.ts)
        with self._errors("write event"):
            self.events_c.replace_one({"_id": event.event_id}, {"_id": event.event_id, **doc},
                                      upsert=True)
        return event.event_id

    def list_events(self, since: Any = None, until: Any = None, device_id: str | None = None,
                    kind: str | None = None, status: str | None = None,
                    limit: int = 1000) -> list[Event]:
        query = _time_query("ts", since, until)
        for key, value in (("device_id", device_id), ("kind", kind), ("status", status)):
            if value is not None:
                query[key] = value
        with self._errors("list events"):
            docs = list(self.events_c.find(query, sort=[("ts", DESCENDING)], limit=int(limit)))
        return [Event.from_dict(d) for d in docs]

    def save_report(self, report: dict[str, Any]) -> str:
        report = stamp_report(report)
        with self._errors("save report"):
            self.reports_c.replace_one({"_id": report["report_id"]},
                                       {"_id": report["report_id"], **_plain(report),
                                        "_created_ms": to_timestamp_ms(report["created_at"])},
                                       upsert=True)
        return report["report_id"]

    def get_report(self, report_id: str) -> dict[str, Any] | None:
        with self._errors("read report"):
            doc = self.reports_c.find_one({"_id": report_id})
        return _strip(doc)

    def list_reports(self, limit: int = 100, kind: str | None = None, since: Any = None,
                     until: Any = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {}
        bounds = {op: to_timestamp_ms(v) for op, v in (("$gte", since), ("$lt", until)) if v is not None}
        if bounds:
            query["_created_ms"] = bounds
        if kind is not None:
            query["kind"] = kind
        with self._errors("list reports"):
            docs = list(self.reports_c.find(query, sort=[("_created_ms", DESCENDING)], limit=int(limit)))
        return [_strip(d) for d in docs]

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        with self._errors("save state"):
            # a JSON round trip: numpy scalars in lists become numbers, as in SQLite
            doc = json.loads(json.dumps(value, default=_json_scalar))
            self.component_state_c.replace_one({"_id": key}, {"_id": key, "doc": doc}, upsert=True)

    def get_state(self, key: str) -> dict[str, Any] | None:
        with self._errors("read state"):
            doc = self.component_state_c.find_one({"_id": key})
        return None if doc is None else doc["doc"]

    # -- model records ----------------------------------------------------------------------
    def allocate_model_version(self, name: str) -> int:
        with self._errors("allocate model version"):
            doc = self.counters_c.find_one_and_update(
                {"_id": name}, {"$inc": {"last": 1}}, upsert=True,
                return_document=ReturnDocument.AFTER)
        return int(doc["last"])

    def insert_model_record(self, record: dict[str, Any]) -> None:
        try:
            with self._errors("insert model record"):
                self.models_c.insert_one({**_plain(record)})
        except StoreError as exc:
            if isinstance(exc.__cause__, DuplicateKeyError):
                raise StoreError(f"model {record['name']} v{record['version']} already exists") from exc
            raise

    def update_model_record(self, name: str, version: int, fields: dict[str, Any]) -> None:
        with self._errors("update model record"):
            result = self.models_c.update_one({"name": name, "version": version},
                                              {"$set": _plain(fields)})
        if result.matched_count == 0:
            raise StoreError(f"model {name} v{version} does not exist")

    def get_model_record(self, name: str, version: int) -> dict[str, Any] | None:
        with self._errors("read model record"):
            return _strip(self.models_c.find_one({"name": name, "version": version}))

    def list_model_records(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._errors("list model records"):
            docs = self.models_c.find({} if name is None else {"name": name},
                                      sort=[("name", ASCENDING), ("version", ASCENDING)])
            return [_strip(d) for d in docs]

    def get_registry_state(self, name: str) -> tuple[dict[str, Any], int]:
        with self._errors("read registry state"):
            doc = self.state_c.find_one({"_id": name})
        return (doc["state"], int(doc["rev"])) if doc else ({}, 0)

    def compare_and_set_registry_state(self, name: str, expected_rev: int,
                                       state: dict[str, Any]) -> bool:
        with self._errors("update registry state"):
            if expected_rev == 0:
                try:
                    self.state_c.insert_one({"_id": name, "rev": 1, "state": _plain(state)})
                    return True
                except DuplicateKeyError:
                    return False
            result = self.state_c.update_one({"_id": name, "rev": expected_rev},
                                             {"$set": {"state": _plain(state), "rev": expected_rev + 1}})
            return result.modified_count == 1


class _MongoErrors:
    """Maps pymongo exceptions to EyeNet's at the edge, with the password redacted."""

    def __init__(self, op: str, uri: str) -> None:
        self.op, self.uri = op, uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, PyMongoError):
            return False
        where = redact_uri(self.uri)
        if isinstance(exc, ConnectionFailure):  # includes server selection time-outs
            raise StoreConnectionError(f"MongoDB at {where} unreachable during {self.op}: {exc}") from exc
        raise StoreError(f"MongoDB {self.op} failed at {where}: {exc}") from exc


def _time_query(field: str, start: Any, end: Any) -> dict[str, Any]:
    """``{field: {$gte: start, $lt: end}}`` with either bound optional."""
    when: dict[str, Any] = {}
    if start is not None:
        when["$gte"] = _from_ms(to_timestamp_ms(start))
    if end is not None:
        when["$lt"] = _from_ms(to_timestamp_ms(end))
    return {field: when} if when else {}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    """Numpy scalars become Python numbers (BSON cannot encode them)."""
    out = {}
    for k, v in doc.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, dict):
            v = _plain(v)
        out[k] = v
    return out


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _strip(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k not in ("_id", "_created_ms")}
