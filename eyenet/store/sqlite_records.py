"""SQLite implementations of the document protocols: events and reports, model records and
registry state, component state.

Each record is a JSON document in a ``doc`` column; the columns beside it are only the
keys and the fields the store filters or orders on, so a new field never needs a schema
change.
"""

from __future__ import annotations

import json
from typing import Any

from eyenet.errors import StoreError
from eyenet.store.base import Event, stamp_report, to_timestamp_ms
from eyenet.store.protocols import ComponentStateStore, EventStore, ModelStore
from eyenet.store.sqlite_access import SQLiteAccess, datetime_from_ms, dumps

RECORDS_SCHEMA = """
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


class SQLiteEvents(SQLiteAccess, EventStore):
    """Events keyed by ``event_id`` (a replace is how an alert resolves); reports by id."""

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
            data["ts"] = datetime_from_ms(data["ts"])
            events.append(Event.from_dict(data))
        return events

    def save_report(self, report: dict[str, Any]) -> str:
        report = stamp_report(report)
        created_ms = to_timestamp_ms(report["created_at"])
        with self._write("save report") as conn:
            conn.execute("INSERT OR REPLACE INTO reports VALUES (?, ?, ?)",
                         (report["report_id"], created_ms, dumps(report)))
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


class SQLiteModels(SQLiteAccess, ModelStore):
    """Version records, a per-name counter, and the registry state under a revision number."""

    def allocate_model_version(self, name: str) -> int:
        with self._write("allocate model version") as conn:
            row = conn.execute(
                "INSERT INTO model_counters (name, last) VALUES (?, 1) ON CONFLICT (name) "
                "DO UPDATE SET last = last + 1 RETURNING last", (name,)).fetchone()
        return int(row[0])

    def insert_model_record(self, record: dict[str, Any]) -> None:
        with self._write("insert model record") as conn:
            conn.execute("INSERT INTO models VALUES (?, ?, ?)",
                         (record["name"], int(record["version"]), dumps(record)))

    def update_model_record(self, name: str, version: int, fields: dict[str, Any]) -> None:
        with self._write("update model record") as conn:
            row = conn.execute("SELECT doc FROM models WHERE name = ? AND version = ?",
                               (name, version)).fetchone()
            if row is None:
                raise StoreError(f"model {name} v{version} does not exist")
            doc = {**json.loads(row[0]), **fields}
            conn.execute("UPDATE models SET doc = ? WHERE name = ? AND version = ?",
                         (dumps(doc), name, version))

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
                                   (name, dumps(state)))
            else:
                cur = conn.execute("UPDATE registry_state SET rev = rev + 1, doc = ? "
                                   "WHERE name = ? AND rev = ?", (dumps(state), name, expected_rev))
            return cur.rowcount == 1


class SQLiteComponentState(SQLiteAccess, ComponentStateStore):
    """One JSON document per key, replaced whole."""

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        with self._write("save state") as conn:
            conn.execute("INSERT OR REPLACE INTO component_state VALUES (?, ?)", (key, dumps(value)))

    def get_state(self, key: str) -> dict[str, Any] | None:
        rows = self._read("SELECT doc FROM component_state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None
