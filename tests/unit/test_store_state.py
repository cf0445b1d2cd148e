"""The ComponentStateStore contract, run on every backend: what a restarted component
reads back."""

from __future__ import annotations

import numpy as np

from eyenet.store import ComponentStateStore


def test_backend_implements_component_state_store(store):
    assert isinstance(store, ComponentStateStore)


def test_component_state_round_trip_and_replace(store):
    assert store.get_state("collector/a") is None
    store.put_state("collector/a", {"devices": [{"device_id": "10.0.0.1", "cursor_ms": 5}]})
    store.put_state("collector/a", {"devices": [{"device_id": "10.0.0.1", "cursor_ms": np.int64(7)}]})
    assert store.get_state("collector/a") == {"devices": [{"device_id": "10.0.0.1", "cursor_ms": 7}]}
    assert store.get_state("collector/b") is None


def test_component_state_keys_are_independent(store):
    store.put_state("monitor", {"version": 1, "points": [["r1", [[1.5, ["latency"]]]]]})
    store.put_state("scaler/r1", {"features": ["latency"], "mean": [0.5]})
    assert store.get_state("monitor")["points"] == [["r1", [[1.5, ["latency"]]]]]
    assert store.get_state("scaler/r1") == {"features": ["latency"], "mean": [0.5]}
