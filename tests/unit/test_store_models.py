"""The ModelStore contract, run on every backend: version numbers, version records and
the compare-and-set registry state the model registry is built on."""

from __future__ import annotations

import pytest

from eyenet.errors import StoreError
from eyenet.store import ModelStore


def test_backend_implements_model_store(store):
    assert isinstance(store, ModelStore)


def test_model_versions_count_up_per_name(store):
    assert [store.allocate_model_version("m") for _ in range(3)] == [1, 2, 3]
    assert store.allocate_model_version("other") == 1


def test_registry_state_compare_and_set(store):
    assert store.get_registry_state("m") == ({}, 0)
    assert store.compare_and_set_registry_state("m", 0, {"production": 1})
    assert not store.compare_and_set_registry_state("m", 0, {"production": 2})
    assert store.compare_and_set_registry_state("m", 1, {"production": 3})
    assert not store.compare_and_set_registry_state("m", 1, {"production": 4})
    assert store.get_registry_state("m") == ({"production": 3}, 2)


def test_model_records_insert_update_get_and_list(store):
    store.insert_model_record({"name": "m", "version": 2, "state": "staging"})
    store.insert_model_record({"name": "m", "version": 1, "state": "staging"})
    store.insert_model_record({"name": "a", "version": 1, "state": "staging"})
    store.update_model_record("m", 1, {"state": "production", "metrics": {"auprc": 0.5}})
    assert store.get_model_record("m", 1) == {"name": "m", "version": 1, "state": "production",
                                              "metrics": {"auprc": 0.5}}
    assert store.get_model_record("m", 3) is None
    assert [(r["name"], r["version"]) for r in store.list_model_records()] == [("a", 1), ("m", 1), ("m", 2)]
    assert [r["version"] for r in store.list_model_records("m")] == [1, 2]


def test_model_record_errors_name_the_version(store):
    store.insert_model_record({"name": "m", "version": 1})
    with pytest.raises(StoreError):
        store.insert_model_record({"name": "m", "version": 1})
    with pytest.raises(StoreError, match="m v7 does not exist"):
        store.update_model_record("m", 7, {"state": "archived"})
