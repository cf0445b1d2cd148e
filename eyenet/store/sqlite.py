"""SQLite backend: the embedded default, safe with several processes writing at once.

WAL lets readers and one writer work concurrently; every write is one ``BEGIN IMMEDIATE``
transaction so concurrent writers queue on the busy timeout instead of failing midway.
``synchronous=NORMAL`` (the default here) survives a crash of any writing process, which
is what Ray workers need; ``?synchronous=FULL`` in the URI also survives power loss.

Telemetry is one wide table keyed ``(device_id, ts_ms)`` WITHOUT ROWID, so the last
window of a device is a single index range scan. A metric seen for the first time gets
its own REAL column (``ALTER TABLE ADD COLUMN``), so any configured metric list works.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from eyenet.errors import StoreConnectionError, StoreError, TelemetryError
from eyenet.store.base import (
    DeviceInfo,
    Event,
    Store,
    WriteResult,
    prepare_samples,
    stamp_report,
    to_timestamp_ms,
)
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, from_ms

SCHEMA = """
CREATE TABLE IF NOT EXISTS network_metrics (
    device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, label INTEGER,
    PRIMARY KEY (device_id, ts_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    device_id TEXT, status TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms);
CREATE TABLE IF NOT EXISTS reports (
    report_id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_counters (name TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS registry_state (
    name TEXT PRIMARY KEY, rev INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS component_state (key TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""
FIXED_COLUMNS = ("device_id", "ts_ms", "label")
LAST_SAMPLES_CHUNK = 200  # devices per statement (SQLite allows 500 compound terms)
CACHE_KIB = 128 * 1024
WAL_CHECKPOINT_PAGES = 20_000  # about 80 MB of WAL between checkpoints


def sqlite_path(uri: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///rel/path.db`` -> ``rel/path.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    if not uri.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite URI: {uri!r} (expected sqlite:///PATH)")
    parts = urlsplit(uri)
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path:
        raise StoreError(f"SQLite URI {uri!r} names no file")
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, params


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SQLiteStore(Store):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.path, params = sqlite_path(uri)
        unknown = set(params) - {"timeout_s", "synchronous"}
        if unknown:
            raise StoreError(f"unknown SQLite URI option(s) {sorted(unknown)} in {uri!r}; "
                             "expected timeout_s, synchronous")
        try:
            self.timeout_s = float(params.get("timeout_s", 30))
        except ValueError as exc:
            raise StoreError(f"timeout_s={params['timeout_s']!r} in {uri!r} is not a number") from exc
        self.synchronous = params.get("synchronous", "NORMAL").upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous={self.synchronous!r} in {uri!r}: expected NORMAL or FULL")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._metric_cols: list[str] = []
        self._connect()

    def __reduce__(self) -> tuple[Any, ...]:
        return (SQLiteStore, (self.uri,))

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._errors("open"):
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # A batch spread over many devices dirties one page per device; a larger cache
            # and rarer WAL checkpoints keep commits from rewriting the file each time.
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            conn.executescript(SCHEMA)
        self._conn, self._pid = conn, os.getpid()
        self._refresh_columns()

    @property
    def conn(self) -> sqlite3.Connection:
        # A connection must not cross a fork; a forked child opens its own.
        if self._conn is None or self._pid != os.getpid():
            self._connect()
        assert self._conn is not None
        return self._conn

    @contextmanager
    def _errors(self, op: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text or "unable to open" in text:
                raise StoreConnectionError(f"SQLite store {self.path}: {op} failed: {text}") from exc
            raise StoreError(f"SQLite store {self.path}: {op} failed: {text}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"SQLite store {self.path}: {op} failed: {exc}") from exc

    @contextmanager
    def _write(self, op: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(op):
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._errors("read"):
            return self.conn.execute(sql, params).fetchall()

    def _refresh_columns(self) -> None:
        rows = self._read("PRAGMA table_info(network_metrics)")
        self._metric_cols = [r[1] for r in rows if r[1] not in FIXED_COLUMNS]

    def _ensure_columns(self, metrics: list[str]) -> None:
        if set(metrics) <= set(self._metric_cols):
            return
        self._refresh_columns()  # another process may have added them
        missing = [m for m in metrics if m not in self._metric_cols]
        for m in missing:
            try:
                with self._write("add metric column") as conn:
                    conn.execute(f"ALTER TABLE network_metrics ADD COLUMN {_q(m)} REAL")
            except StoreError as exc:
                if "duplicate column" not in str(exc):
                    raise
        self._refresh_columns()

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- telemetry ------------------------------------------------------------------------
    def write_samples(self, frame: pd.DataFrame) -> WriteResult:
        prepared, metrics = prepare_samples(frame)
        if not len(prepared):
            return WriteResult(0, 0)
        self._ensure_columns(metrics)
        columns = [*FIXED_COLUMNS, *metrics]
        sql = (f"INSERT OR IGNORE INTO network_metrics ({', '.join(map(_q, columns))}) "
               f"VALUES ({', '.join('?' * len(columns))})")
        rows = list(zip(prepared.device_id, prepared.ts_ms, prepared.label,
                        *(prepared.values[m] for m in metrics), strict=True))
        with self._write("write samples") as conn:
            before = conn.total_changes
            conn.executemany(sql, rows)
            inserted = conn.total_changes - before
        return WriteResult(inserted, len(rows) - inserted)

    def _frame(self, rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
        raw = pd.DataFrame.from_records(rows, columns=[DEVICE, "ts_ms", LABEL, *columns])
        out = pd.DataFrame({DEVICE: raw[DEVICE].astype(str), TIMESTAMP: from_ms(raw["ts_ms"])})
        for m in columns:
            out[m] = raw[m].astype("float64")
        out[LABEL] = raw[LABEL].astype("Int8")
        return out

    def _empty_frame(self) -> pd.DataFrame:
        return self._frame([], list(self._metric_cols))

    def _select(self) -> tuple[str, list[str]]:
        self._refresh_columns()
        cols = list(self._metric_cols)
        return ", ".join(map(_q, [*FIXED_COLUMNS, *cols])), cols

    def last_window(self, device_id: str, window_s: float = 300.0, end: Any = None) -> pd.DataFrame:
        if not window_s > 0:
            raise TelemetryError(f"window_s must be > 0, got {window_s!r}")
        select, cols = self._select()
        if end is None:
            row = self._read("SELECT MAX(ts_ms) FROM network_metrics WHERE device_id = ?",
                             (device_id,))
            if row[0][0] is None:
                return self._frame([], cols)
            end_ms = row[0][0]
        else:
            end_ms = to_timestamp_ms(end)
        rows = self._read(
            f"SELECT {select} FROM network_metrics WHERE device_id = ? AND ts_ms > ? "
            "AND ts_ms <= ? ORDER BY ts_ms", (device_id, end_ms - int(window_s * 1000), end_ms))
        return self._frame(rows, cols)

    def last_samples(self, device_ids: Sequence[str], rows: int) -> pd.DataFrame:
        if not int(rows) >= 1:
            raise TelemetryError(f"rows must be >= 1, got {rows!r}")
        select, cols = self._select()
        ids = sorted(set(map(str, device_ids)))
        found: list[tuple[Any, ...]] = []
        # one statement per chunk: each device's newest rows through its (device, time) index
        for i in range(0, len(ids), LAST_SAMPLES_CHUNK):
            chunk = ids[i:i + LAST_SAMPLES_CHUNK]
            sql = " UNION ALL ".join(
                f"SELECT * FROM (SELECT {select} FROM network_metrics WHERE device_id = ? "
                "ORDER BY ts_ms DESC LIMIT ?)" for _ in chunk)
            found += self._read(sql, [p for d in chunk for p in (d, int(rows))])
        found.sort(key=lambda r: (r[0], r[1]))  # (device_id, ts_ms)
        return self._frame(found, cols)

    def iter_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None,
                   chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
        select, cols = self._select()
        where, params = [], []
        if start is not None:
            where.append("ts_ms >= ?")
            params.append(to_timestamp_ms(start))
        if end is not None:
            where.append("ts_ms < ?")
            params.append(to_timestamp_ms(end))
        if device_ids is not None:
            where.append(f"device_id IN ({', '.join('?' * len(device_ids))})")
            params.extend(device_ids)
        after: tuple[str, int] | None = None
        # Keyset pagination: each chunk is its own short query, so no read transaction
        # stays open across yields and writers are never held up by a slow consumer.
        while True:
            clauses = list(where)
            page_params = list(params)
            if after is not None:
                clauses.append("(device_id, ts_ms) > (?, ?)")
                page_params.extend(after)
            sql = f"SELECT {select} FROM network_metrics"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            rows = self._read(sql + " ORDER BY device_id, ts_ms LIMIT ?", [*page_params, chunk_rows])
            if not rows:
                return
            yield self._frame(rows, cols)
            if len(rows) < chunk_rows:
                return
            after = (rows[-1][0], rows[-1][1])

    def list_devices(self) -> list[DeviceInfo]:
        rows = self._read("SELECT device_id, COUNT(*), MIN(ts_ms), MAX(ts_ms) FROM network_metrics "
                          "GROUP BY device_id ORDER BY device_id")
        return [DeviceInfo(d, n, _dt(lo), _dt(hi)) for d, n, lo, hi in rows]

    def count_samples(self, device_id: str | None = None) -> int:
        if device_id is None:
            return self._read("SELECT COUNT(*) FROM network_metrics")[0][0]
        return self._read("SELECT COUNT(*) FROM network_metrics WHERE device_id = ?",
                          (device_id,))[0][0]

    # -- events and reports -----------------------------------------------------------------
    def upsert_event(self, event: Event) -> str:
        doc = event.to_dict()
        ts_ms = to_timestamp_ms(event.ts)
        doc["ts"] = ts_ms
        with self._write("write event") as conn:
            conn.execute("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?)",
                         (event.event_id, ts_ms, event.kind, event.device_id, event.status,
                          json.dumps(doc)))
        return event.event_id

    def list_events(self, since: Any = None, until: Any = None, device_id: str | None = None,
                    kind: str | None = None, status: str | None = None,
                    limit: int = 1000) -> list[Event]:
        where, params = [], []
        for clause, value in (("ts_ms >= ?", since), ("ts_ms < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(to_timestamp_ms(value))
        for column, value in (("device_id", device_id), ("kind", kind), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT doc FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._read(sql + " ORDER BY ts_ms DESC LIMIT ?", [*params, int(limit)])
        events = []
        for (doc,) in rows:
            data = json.loads(doc)
            data["ts"] = _dt(data["ts"])
            events.append(Event.from_dict(data))
        return events

    def save_report(self, report: dict[str, Any]) -> str:
        report = stamp_report(report)
        created_ms = to_timestamp_ms(report["created_at"])
        with self._write("save report") as conn:
            conn.execute("INSERT OR REPLACE INTO reports VALUES (?, ?, ?)",
                         (report["report_id"], created_ms, _dumps(report)))
        return report["report_id"]

    def get_report(self, report_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT doc FROM reports WHERE report_id = ?", (report_id,))
        return json.loads(rows[0][0]) if rows else None

    def list_reports(self, limit: int = 100, kind: str | None = None, since: Any = None,
                     until: Any = None) -> list[dict[str, Any]]:
        where, params = [], []
        for clause, value in (("created_ms >= ?", since), ("created_ms < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(to_timestamp_ms(value))
        if kind is not None:
            where.append("json_extract(doc, '$.kind') = ?")
            params.append(kind)
        sql = "SELECT doc FROM reports" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._read(sql + " ORDER BY created_ms DESC LIMIT ?", [*params, int(limit)])
        return [json.loads(doc) for (doc,) in rows]

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        with self._write("save state") as conn:
            conn.execute("INSERT OR REPLACE INTO component_state VALUES (?, ?)", (key, _dumps(value)))

    def get_state(self, key: str) -> dict[str, Any] | None:
        rows = self._read("SELECT doc FROM component_state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    # -- model records ------------------------------------------------------------------------
    def allocate_model_version(self, name: str) -> int:
        with self._write("allocate model version") as conn:
            row = conn.execute(
                "INSERT INTO model_counters (name, last) VALUES (?, 1) ON CONFLICT (name) "
                "DO UPDATE SET last = last + 1 RETURNING last", (name,)).fetchone()
        return int(row[0])

    def insert_model_record(self, record: dict[str, Any]) -> None:
        with self._write("insert model record") as conn:
            conn.execute("INSERT INTO models VALUES (?, ?, ?)",
                         (record["name"], int(record["version"]), _dumps(record)))

    def update_model_record(self, name: str, version: int, fields: dict[str, Any]) -> None:
        with self._write("update model record") as conn:
            row = conn.execute("SELECT doc FROM models WHERE name = ? AND version = ?",
                               (name, version)).fetchone()
            if row is None:
                raise StoreError(f"model {name} v{version} does not exist")
            doc = {**json.loads(row[0]), **fields}
            conn.execute("UPDATE models SET doc = ? WHERE name = ? AND version = ?",
                         (_dumps(doc), name, version))

    def get_model_record(self, name: str, version: int) -> dict[str, Any] | None:
        rows = self._read("SELECT doc FROM models WHERE name = ? AND version = ?", (name, version))
        return json.loads(rows[0][0]) if rows else None

    def list_model_records(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            rows = self._read("SELECT doc FROM models ORDER BY name, version")
        else:
            rows = self._read("SELECT doc FROM models WHERE name = ? ORDER BY version", (name,))
        return [json.loads(doc) for (doc,) in rows]

    def get_registry_state(self, name: str) -> tuple[dict[str, Any], int]:
        rows = self._read("SELECT doc, rev FROM registry_state WHERE name = ?", (name,))
        return (json.loads(rows[0][0]), int(rows[0][1])) if rows else ({}, 0)

    def compare_and_set_registry_state(self, name: str, expected_rev: int,
                                       state: dict[str, Any]) -> bool:
        with self._write("update registry state") as conn:
            if expected_rev == 0:
                cur = conn.execute("INSERT OR IGNORE INTO registry_state VALUES (?, 1, ?)",
                                   (name, _dumps(state)))
            else:
                cur = conn.execute("UPDATE registry_state SET rev = rev + 1, doc = ? "
                                   "WHERE name = ? AND rev = ?", (_dumps(state), name, expected_rev))
            return cur.rowcount == 1


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, default=_json_default, allow_nan=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
