"""Shared fixtures. The store fixtures run one contract on every backend:

* ``sqlite``: a real SQLite file;
* ``mongomock``: the MongoDB backend on an in-memory mongomock client (CI);
* ``mongodb``: a real server, only when ``EYENET_TEST_MONGO_URI`` is set.

Backends that other processes can reach (``multiprocess``) run the concurrency and
killed-writer tests in real processes; mongomock lives in one process, so it runs them in
threads and with an interrupted write instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from eyenet.store import Store, open_store

MONGO_URI = os.environ.get("EYENET_TEST_MONGO_URI")


@dataclass
class Backend:
    name: str
    uri: str
    open: Callable[[], Store]
    multiprocess: bool


def _backends() -> list[str]:
    names = ["sqlite", "mongomock"]
    if MONGO_URI:
        names.append("mongodb")
    return names


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[Backend]:
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path}/eyenet.db"
        yield Backend("sqlite", uri, lambda: open_store(uri), True)
    elif request.param == "mongomock":
        import mongomock

        from eyenet.store.mongo import MongoStore

        client = mongomock.MongoClient(tz_aware=True)
        uri = "mongodb://mongomock.invalid/eyenet_test"
        yield Backend("mongomock", uri, lambda: MongoStore(uri, client=client), False)
    else:
        import pymongo

        db = f"eyenet_test_{uuid.uuid4().hex[:8]}"
        base, _, query = MONGO_URI.partition("?")
        base = base.rstrip("/")
        if base.count("/") > 2:  # the URI names a database: replace it
            base = base.rsplit("/", 1)[0]
        uri = f"{base}/{db}" + (f"?{query}" if query else "")
        yield Backend("mongodb", uri, lambda: open_store(uri), True)
        pymongo.MongoClient(MONGO_URI).drop_database(db)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.open()
    yield s
    s.close()


@pytest.fixture(scope="session")
def components():
    """Real snmpd, node_exporter and Prometheus (tests/components.py): the ones `.ci/run`
    started (named by EYENET_TEST_*), else started here for this session and stopped after."""
    import shutil

    from tests.components import require_components

    running = require_components()
    yield running
    if running.started_here:
        running.stop()
        shutil.rmtree(running.dir, ignore_errors=True)  # a temp dir of its own
