"""Stores, opened by URI: ``sqlite:///PATH`` (embedded default) or ``mongodb://...``."""

from __future__ import annotations

from typing import Any

from eyenet.errors import StoreError
from eyenet.store.base import DeviceInfo, Event, Store, WriteResult, redact_uri

__all__ = ["DeviceInfo", "Event", "Store", "WriteResult", "open_store", "redact_uri"]


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
