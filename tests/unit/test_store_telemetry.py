"""The TelemetryStore contract, run on every backend (the ``store`` and ``backend`` fixtures
in tests/conftest.py): idempotent writes, window and range reads, durability."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from eyenet.errors import EyeNetError, TelemetryError
from eyenet.store import TelemetryStore
from tests import helpers
from tests.helpers import METRICS, samples

T0 = 1_700_000_000


def test_backend_implements_telemetry_store(store):
    assert isinstance(store, TelemetryStore)


def test_write_is_idempotent_and_counts_duplicates(store):
    frame = samples(["r1", "r2"], T0, 10)
    first = store.write_samples(frame)
    again = store.write_samples(frame)
    assert (first.inserted, first.duplicates) == (20, 0)
    assert (again.inserted, again.duplicates) == (0, 20)
    assert store.count_samples() == 20
    assert store.count_samples("r1") == 10


def test_first_write_wins_on_conflicting_values(store):
    frame = samples(["r1"], T0, 3)
    store.write_samples(frame)
    changed = frame.assign(latency=-1.0)
    assert store.write_samples(changed).duplicates == 3
    assert (store.read_range()["latency"] >= 0).all()


def test_round_trip_keeps_values_missing_values_labels_and_utc(store):
    frame = samples(["r1"], T0, 4)
    frame.loc[1, "latency"] = np.nan
    frame["label"] = pd.array([0, 1, None, 0], dtype="Int8")
    store.write_samples(frame)
    back = store.read_range()
    assert set(back.columns) == {"device_id", "timestamp", *METRICS, "label"}
    assert str(back["timestamp"].dt.tz) == "UTC"
    pd.testing.assert_series_equal(back["timestamp"], frame["timestamp"].dt.as_unit(
        back["timestamp"].dt.unit), check_names=False)
    assert np.isnan(back.loc[1, "latency"])
    np.testing.assert_allclose(back["bytes_in"], frame["bytes_in"])
    assert back["label"].tolist()[:2] == [0, 1] and back["label"].isna().tolist()[2]


def test_millisecond_timestamps_are_distinct_samples(store):
    frame = samples(["r1"], T0, 5, step_s=0.001)
    assert store.write_samples(frame).inserted == 5


def test_last_window_is_the_newest_window_of_one_device(store):
    store.write_samples(samples(["a", "b"], T0, 600))
    window = store.last_window("a", window_s=300)
    assert len(window) == 300
    assert set(window["device_id"]) == {"a"}
    assert window["timestamp"].is_monotonic_increasing
    assert window["timestamp"].iloc[-1] == pd.Timestamp(T0 + 599, unit="s", tz="UTC")
    ended = store.last_window("a", window_s=10, end=datetime.fromtimestamp(T0 + 100, UTC))
    assert len(ended) == 10
    assert ended["timestamp"].iloc[-1] == pd.Timestamp(T0 + 100, unit="s", tz="UTC")
    assert store.last_window("nobody").empty


def test_last_samples_are_each_devices_newest_rows_in_one_read(store):
    store.write_samples(samples(["a", "b"], T0, 50))
    store.write_samples(samples(["c"], T0 + 1000, 3))
    got = store.last_samples(["c", "a", "nobody", "a", "b"], rows=10)
    assert list(got["device_id"]) == ["a"] * 10 + ["b"] * 10 + ["c"] * 3
    a = got[got["device_id"] == "a"]["timestamp"]
    assert a.is_monotonic_increasing and a.iloc[-1] == pd.Timestamp(T0 + 49, unit="s", tz="UTC")
    assert a.iloc[0] == pd.Timestamp(T0 + 40, unit="s", tz="UTC")
    assert store.last_samples(["nobody"], rows=5).empty
    with pytest.raises(EyeNetError, match="rows"):
        store.last_samples(["a"], rows=0)


def test_read_range_filters_by_time_and_device_in_chunks(store):
    store.write_samples(samples(["a", "b", "c"], T0, 100))
    start = pd.Timestamp(T0 + 10, unit="s", tz="UTC")
    end = pd.Timestamp(T0 + 20, unit="s", tz="UTC")
    part = store.read_range(start, end, device_ids=["a", "c"])
    assert len(part) == 20
    assert set(part["device_id"]) == {"a", "c"}
    chunks = list(store.iter_range(chunk_rows=70))
    assert [len(c) for c in chunks] == [70, 70, 70, 70, 20]
    whole = pd.concat(chunks, ignore_index=True)
    assert not whole.duplicated(["device_id", "timestamp"]).any()
    assert whole[["device_id", "timestamp"]].equals(
        whole[["device_id", "timestamp"]].sort_values(["device_id", "timestamp"]))


def test_list_devices(store):
    store.write_samples(samples(["b", "a"], T0, 5))
    devices = store.list_devices()
    assert [d.device_id for d in devices] == ["a", "b"]
    assert devices[0].n_samples == 5
    assert devices[0].first_ts == datetime.fromtimestamp(T0, UTC)
    assert devices[0].last_ts == datetime.fromtimestamp(T0 + 4, UTC)


def test_new_metric_columns_are_added(store):
    store.write_samples(samples(["a"], T0, 2))
    extra = pd.DataFrame({"device_id": ["a"], "timestamp": [T0 + 10], "cpu": [0.5]})
    assert store.write_samples(extra).inserted == 1
    back = store.read_range()
    assert "cpu" in back.columns
    assert back["cpu"].isna().sum() == 2


@pytest.mark.parametrize("frame, needle", [
    (pd.DataFrame({"timestamp": [1], "x": [1.0]}), "device_id"),
    (pd.DataFrame({"device_id": ["a"], "x": [1.0]}), "timestamp"),
    (pd.DataFrame({"device_id": ["a"], "timestamp": [1]}), "no metric"),
    (pd.DataFrame({"device_id": ["a"], "timestamp": ["yesterday-ish"], "x": [1.0]}), "row 0"),
    (pd.DataFrame({"device_id": ["a", None], "timestamp": [1, 2], "x": [1.0, 2.0]}), "row 1"),
    (pd.DataFrame({"device_id": ["a"], "timestamp": [1], "x": ["lots"]}), "'x'"),
])
def test_malformed_frames_are_refused_whole(store, frame, needle):
    store.write_samples(samples(["keep"], T0, 3))
    with pytest.raises(TelemetryError, match=needle):
        store.write_samples(frame)
    assert store.count_samples() == 3


def test_empty_store_reads_empty_frames(store):
    assert store.read_range().empty
    assert list(store.iter_range()) == []
    assert store.count_samples() == 0 and store.count_samples("nobody") == 0
    assert store.list_devices() == []
    store.write_samples(samples(["a"], T0, 2))
    before = store.read_range(end=pd.Timestamp(T0, unit="s", tz="UTC"))
    assert before.empty and {"device_id", "timestamp", "label"} <= set(before.columns)


def test_concurrent_writers_end_with_exactly_the_unique_samples(backend):
    n_workers, n_batches, batch_devices = 4, 8, 3
    backend.open().close()  # create the schema once, as a deployment would
    if backend.multiprocess:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(n_workers) as pool:
            inserted = pool.starmap(helpers.write_overlapping,
                                    [(backend.uri, w, n_batches, batch_devices) for w in range(n_workers)])
        store = backend.open()
    else:
        store = backend.open()
        inserted = [0] * n_workers

        def run(w: int) -> None:
            inserted[w] = helpers.write_overlapping_on(store, w, n_batches, batch_devices)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(n_workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    unique_devices = n_batches + 1
    expected = unique_devices * 50
    assert store.count_samples() == expected
    assert sum(inserted) == expected  # every sample inserted exactly once across writers
    back = store.read_range()
    assert not back.duplicated(["device_id", "timestamp"]).any()
    reference = samples([f"dev-{i:03d}" for i in range(unique_devices)], T0, 50)
    np.testing.assert_allclose(back.sort_values(["device_id", "timestamp"])["latency"],
                               reference["latency"])
    store.close()


def test_killed_writer_loses_nothing_it_acknowledged(backend):
    # mongomock scans every document per query; smaller batches keep it quick.
    batch_rows = 2000 if backend.multiprocess else 200
    backend.open().close()
    if backend.multiprocess:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=helpers.write_until_killed, args=(backend.uri, child, batch_rows))
        proc.start()
        acked = []
        while len(acked) < 5:
            assert parent.poll(120), "writer process produced no acknowledgement"
            acked.append(parent.recv())
        helpers.sigkill(proc.pid)  # mid-stream: the next batch is being written
        proc.join(30)
        while parent.poll():
            acked.append(parent.recv())
        store = backend.open()
    else:
        store = backend.open()
        acked = helpers.write_until_interrupted(store, batch_rows, interrupt_at_batch=5)
    for b in acked:
        assert store.count_samples(f"kill-{b:05d}") == batch_rows, f"acknowledged batch {b} lost"
    # The batch in flight may be partly stored; retrying it completes it without duplicates.
    in_flight = max(acked) + 1
    retry = store.write_samples(samples([f"kill-{in_flight:05d}"], T0, batch_rows, seed=in_flight))
    assert retry.inserted + retry.duplicates == batch_rows
    assert store.count_samples(f"kill-{in_flight:05d}") == batch_rows
    assert store.count_samples() == batch_rows * (len(acked) + 1)
    store.close()
