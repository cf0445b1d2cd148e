"""SQLite implementation of :class:`~eyenet.store.protocols.TelemetryStore`.

Telemetry is one wide table keyed ``(device_id, ts_ms)`` WITHOUT ROWID, so the last
window of a device is a single index range scan. A metric seen for the first time gets
its own REAL column (``ALTER TABLE ADD COLUMN``), so any configured metric list works.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from eyenet.errors import StoreError, TelemetryError
from eyenet.store.base import DeviceInfo, WriteResult, prepare_samples, to_timestamp_ms
from eyenet.store.protocols import TelemetryStore
from eyenet.store.sqlite_access import SQLiteAccess, datetime_from_ms, quote
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, from_ms

TELEMETRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS network_metrics (
    device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, label INTEGER,
    PRIMARY KEY (device_id, ts_ms)) WITHOUT ROWID;
"""
FIXED_COLUMNS = ("device_id", "ts_ms", "label")
LAST_SAMPLES_CHUNK = 200  # devices per statement (SQLite allows 500 compound terms)


class SQLiteTelemetry(SQLiteAccess, TelemetryStore):
    """Samples in the ``network_metrics`` table; one REAL column per metric ever written."""

    _metric_cols: list[str]  # the table's metric columns, as this process last saw them

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
                    conn.execute(f"ALTER TABLE network_metrics ADD COLUMN {quote(m)} REAL")
            except StoreError as exc:
                if "duplicate column" not in str(exc):  # lost a race with another writer: fine
                    raise
        self._refresh_columns()

    def write_samples(self, frame: pd.DataFrame) -> WriteResult:
        prepared, metrics = prepare_samples(frame)
        if not len(prepared):
            return WriteResult(0, 0)
        self._ensure_columns(metrics)
        columns = [*FIXED_COLUMNS, *metrics]
        sql = (f"INSERT OR IGNORE INTO network_metrics ({', '.join(map(quote, columns))}) "
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

    def _select(self) -> tuple[str, list[str]]:
        self._refresh_columns()
        cols = list(self._metric_cols)
        return ", ".join(map(quote, [*FIXED_COLUMNS, *cols])), cols

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

    def read_range(self, start: Any = None, end: Any = None,
                   device_ids: Sequence[str] | None = None) -> pd.DataFrame:
        chunks = list(self.iter_range(start, end, device_ids))
        if not chunks:
            return self._frame([], list(self._metric_cols))
        return pd.concat(chunks, ignore_index=True)

    def list_devices(self) -> list[DeviceInfo]:
        rows = self._read("SELECT device_id, COUNT(*), MIN(ts_ms), MAX(ts_ms) FROM network_metrics "
                          "GROUP BY device_id ORDER BY device_id")
        return [DeviceInfo(d, n, datetime_from_ms(lo), datetime_from_ms(hi)) for d, n, lo, hi in rows]

    def count_samples(self, device_id: str | None = None) -> int:
        if device_id is None:
            return self._read("SELECT COUNT(*) FROM network_metrics")[0][0]
        return self._read("SELECT COUNT(*) FROM network_metrics WHERE device_id = ?",
                          (device_id,))[0][0]
