"""Stores, opened by URI: ``sqlite:///PATH`` (embedded default) or ``mongodb://...``.

:class:`Store` is the union of the four protocols in :mod:`eyenet.store.protocols`; type
code that needs one part against that part (``TelemetryStore``, ``EventStore``,
``ModelStore``, ``ComponentStateStore``).
"""

from __future__ import annotations

from typing import Any

from eyenet.errors import StoreError
from eyenet.store.base import DeviceInfo, Event, WriteResult, redact_uri
from eyenet.store.protocols import (
    ComponentStateStore,
    EventStore,
    ModelStore,
    Store,
    TelemetryStore,
)

__all__ = ["ComponentStateStore", "DeviceInfo", "Event", "EventStore", "ModelStore", "Store",
           "TelemetryStore", "WriteResult", "open_store", "redact_uri"]


def open_store(uri: str, **kwargs: Any) -> Store:
    """Open the store a URI names. MongoDB is imported only when asked for."""
    if uri.startswith("sqlite:///"):
        from eyenet.store.sqlite import SQLiteStore

        return SQLiteStore(uri, **kwargs)
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        from eyenet.store.mongo import MongoStore

        return MongoStore(uri, **kwargs)
    raise StoreError(f"unsupported store URI {redact_uri(uri)!r}: expected sqlite:///PATH "
                     "or mongodb://HOST/DB")
