"""What the SQLite protocol implementations need from the connection, and their codecs.

:class:`~eyenet.store.sqlite.SQLiteStore` owns the connection (pragmas, schema, locking,
error mapping) and provides :meth:`SQLiteAccess._read` and :meth:`SQLiteAccess._write`;
the telemetry and records mixins are written against this small base, so each can be
read without the connection code and none imports the class that combines them.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import numpy as np


class SQLiteAccess(ABC):
    """Reads and write transactions on the store's connection."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one statement; SQLite errors raised as StoreError."""

    @abstractmethod
    def _write(self, op: str) -> AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed on exit and rolled back on error;
        ``op`` names the write in error messages."""


def quote(name: str) -> str:
    """An identifier (a metric name becomes a column name) quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


def datetime_from_ms(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dumps(doc: dict[str, Any]) -> str:
    """JSON for a document column; NaN is refused (SQLite's json functions reject it)."""
    return json.dumps(doc, default=_json_default, allow_nan=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
