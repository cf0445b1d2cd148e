"""SQLite backend: the embedded default, safe with several processes writing at once.

WAL lets readers and one writer work concurrently; every write is one ``BEGIN IMMEDIATE``
transaction so concurrent writers queue on the busy timeout instead of failing midway.
``synchronous=NORMAL`` (the default here) survives a crash of any writing process, which
is what Ray workers need; ``?synchronous=FULL`` in the URI also survives power loss.

This module owns the connection; each protocol is implemented by its own mixin
(:mod:`eyenet.store.sqlite_telemetry` for samples, :mod:`eyenet.store.sqlite_records` for
events and reports, model records and component state), all written against
:class:`~eyenet.store.sqlite_access.SQLiteAccess`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from eyenet.errors import StoreConnectionError, StoreError
from eyenet.store.protocols import Store
from eyenet.store.sqlite_records import (
    RECORDS_SCHEMA,
    SQLiteComponentState,
    SQLiteEvents,
    SQLiteModels,
)
from eyenet.store.sqlite_telemetry import TELEMETRY_SCHEMA, SQLiteTelemetry

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


class SQLiteStore(SQLiteTelemetry, SQLiteEvents, SQLiteModels, SQLiteComponentState, Store):
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
        self._metric_cols = []
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
            conn.executescript(TELEMETRY_SCHEMA + RECORDS_SCHEMA)
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

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
