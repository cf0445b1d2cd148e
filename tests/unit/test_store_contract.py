"""The Store union: what ``open_store`` returns on every backend. The parts have their own
suites (test_store_telemetry, test_store_events, test_store_models, test_store_state), each
run on every backend through the fixtures in tests/conftest.py."""

from __future__ import annotations

import pickle

import pytest

from eyenet.errors import StoreError
from eyenet.store import (
    ComponentStateStore,
    EventStore,
    ModelStore,
    Store,
    TelemetryStore,
    open_store,
)

PARTS = (TelemetryStore, EventStore, ModelStore, ComponentStateStore)


def test_backend_is_a_store_with_every_part(store):
    assert isinstance(store, Store)
    assert all(isinstance(store, part) for part in PARTS)
    with store as same:
        assert same is store


def test_store_pickles_as_its_uri(backend):
    store = backend.open()
    if backend.name == "mongomock":  # its client lives in this process only: refused by name
        with pytest.raises(TypeError, match="injected client"):
            pickle.dumps(store)
        return
    again = pickle.loads(pickle.dumps(store))
    assert type(again) is type(store) and again.uri == store.uri
    again.ping()
    again.close()
    store.close()


def test_a_store_missing_a_method_cannot_be_built():
    class Partial(Store):
        uri = "sqlite:///nowhere.db"

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_unknown_uri_scheme_is_refused_by_name():
    with pytest.raises(StoreError, match="unsupported store URI 'redis://"):
        open_store("redis://localhost/0")


def test_credentials_never_appear_in_reprs_or_errors():
    import mongomock

    from eyenet.errors import StoreError
    from eyenet.store import open_store
    from eyenet.store.mongo import MongoStore

    uri = "mongodb://eyenet:s3cret@db.invalid:27017/prod"
    store = MongoStore(uri, client=mongomock.MongoClient())
    assert "s3cret" not in repr(store) and "***" in repr(store)
    with pytest.raises(StoreError) as info:
        open_store("postgres://eyenet:s3cret@db.invalid/prod")
    assert "s3cret" not in str(info.value)
