"""The collector core without Ray: exactly-once storage across a crash, backpressure on a
failing store, per-device and whole-source failures retried with backoff."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError, StoreConnectionError
from eyenet.sources.base import FetchResult, Source
from eyenet.streaming.collector import Collector
from eyenet.telemetry.validation import TelemetryValidator
from tests.helpers import Clock

METRICS = ["bytes_in", "latency"]
T0_MS = 1_700_000_000_000


class GridSource(Source):
    """One sample per device per second; values a pure function of (device, tick)."""

    name = "grid"
    interval_s = 1.0

    def __init__(self, devices: list[str], clock: Clock) -> None:
        self._devices, self.clock = devices, clock
        self.fail_devices: set[str] = set()
        self.down = False
        self.calls = 0

    def devices(self) -> list[str]:
        return list(self._devices)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def fetch(self, device_ids: Sequence[str], since_ms: int, until_ms: int) -> FetchResult:
        self.calls += 1
        if self.down:
            raise SourceError("grid source is down", self.name)
        ticks = np.arange(since_ms // 1000 + 1, until_ms // 1000 + 1)
        rows = []
        for device in device_ids:
            if device in self.fail_devices:
                continue
            k = int(device[-1])
            for t in ticks:
                rows.append({"device_id": device, "timestamp": pd.Timestamp(int(t), unit="s", tz="UTC"),
                             "bytes_in": float(t * 1000 * (k + 1)), "latency": float((t * 7 + k) % 13)})
        frame = pd.DataFrame(rows, columns=["device_id", "timestamp", *METRICS])
        return FetchResult(frame, {d: "timeout" for d in device_ids if d in self.fail_devices})


@pytest.fixture
def cfg() -> EyeNetConfig:
    return EyeNetConfig(metrics=METRICS, counter_metrics=["bytes_in"],
                        streaming={"fetch_chunk_s": 30, "max_pending_samples": 100,
                                   "retry_initial_s": 2, "retry_max_s": 8})


def expected(cfg: EyeNetConfig, source: GridSource, devices: list[str], since_ms: int,
             until_ms: int) -> pd.DataFrame:
    """What an uninterrupted collector stores: the source's samples through the schema rules."""
    return TelemetryValidator(cfg).validate(source.fetch(devices, since_ms, until_ms).samples).accepted


def stored(store, devices) -> pd.DataFrame:
    return store.read_range(device_ids=devices).drop(columns="label").sort_values(
        ["device_id", "timestamp"]).reset_index(drop=True)


def test_backlog_is_fetched_in_chunks_and_stored_once(cfg, store):
    clock = Clock(T0_MS / 1000 + 100)
    devices = ["d1", "d2"]
    source = GridSource(devices, clock)
    collector = Collector(cfg, source, store, devices, "c", start_ms=T0_MS, now_s=clock)
    results = [collector.poll() for _ in range(4)]
    assert [r.caught_up for r in results] == [False, False, False, True]
    want = expected(cfg, GridSource(devices, clock), devices, T0_MS, T0_MS + 100_000)
    pd.testing.assert_frame_equal(stored(store, devices), want.drop(columns="label"), check_dtype=False)
    assert collector.stats()["totals"]["stored"] == 200


def test_a_crash_between_write_and_state_save_stores_nothing_twice(cfg, store, monkeypatch):
    clock = Clock(T0_MS / 1000 + 20)
    devices = ["d1", "d2"]
    source = GridSource(devices, clock)
    first = Collector(cfg, source, store, devices, "c", start_ms=T0_MS, now_s=clock)
    first.poll()
    clock.now += 15

    def crash(*_):  # the samples are durable, the cursors are not: the process dies here
        raise SystemExit("killed")

    monkeypatch.setattr(first, "_save_state", crash)
    with pytest.raises(SystemExit):
        first.poll()
    clock.now += 15
    second = Collector(cfg, source, store, devices, "c", start_ms=T0_MS, now_s=clock)
    assert second.cursor_ms == {"d1": T0_MS + 20_000, "d2": T0_MS + 20_000}
    second.poll()
    want = expected(cfg, GridSource(devices, clock), devices, T0_MS, T0_MS + 50_000)
    pd.testing.assert_frame_equal(stored(store, devices), want.drop(columns="label"), check_dtype=False)
    assert second.stats()["totals"]["store_duplicates"] == 30  # the re-fetched 15 s of 2 devices
    # counter rates continue across the restart: no baseline repair after the first sample
    assert second.stats()["repaired"].get("counter_baseline:bytes_in") == 2


def test_a_failing_store_keeps_samples_pending_then_stops_fetching(cfg, store, monkeypatch):
    clock = Clock(T0_MS / 1000 + 30)
    devices = ["d1", "d2"]
    source = GridSource(devices, clock)
    collector = Collector(cfg, source, store, devices, "c", start_ms=T0_MS, now_s=clock)

    def down(_frame):
        raise StoreConnectionError("database is locked")

    monkeypatch.setattr(store, "write_samples", down)
    first = collector.poll()
    assert first.store_error and collector.stats()["pending_samples"] == 60
    clock.now += 30
    collector.poll()  # 120 pending > max_pending_samples 100: no more fetching
    calls = source.calls
    clock.now += 30
    collector.poll()
    assert source.calls == calls, "a full pending buffer must stop polling the source"
    assert collector.stats()["pending_samples"] == 120
    monkeypatch.undo()
    result = collector.poll()
    assert len(result.accepted) == 120 and collector.stats()["pending_samples"] == 0
    collector.poll()
    want = expected(cfg, GridSource(devices, clock), devices, T0_MS, T0_MS + 90_000)
    pd.testing.assert_frame_equal(stored(store, devices), want.drop(columns="label"), check_dtype=False)


def test_failing_device_backs_off_while_the_others_go_on(cfg, store):
    clock = Clock(T0_MS / 1000 + 10)
    devices = ["d1", "d2"]
    source = GridSource(devices, clock)
    source.fail_devices = {"d2"}
    collector = Collector(cfg, source, store, devices, "c", start_ms=T0_MS, now_s=clock)
    result = collector.poll()
    assert result.failed_devices == {"d2": "timeout"}
    assert store.count_samples("d1") == 10 and store.count_samples("d2") == 0
    failing = collector.stats()["failing_devices"]["d2"]
    assert failing["failures"] == 1 and failing["error"] == "timeout"
    source.fail_devices = set()
    clock.now += 1  # inside the 2 s backoff: d2 is not asked yet
    collector.poll()
    assert store.count_samples("d2") == 0 and store.count_samples("d1") == 11
    clock.now += 2
    collector.poll()
    assert store.count_samples("d2") == 13, "after the backoff d2 catches up from its cursor"
    assert "d2" not in collector.stats()["failing_devices"]


def test_a_source_that_raises_is_retried_with_growing_backoff(cfg, store):
    clock = Clock(T0_MS / 1000 + 5)
    source = GridSource(["d1"], clock)
    source.down = True
    collector = Collector(cfg, source, store, ["d1"], "c", start_ms=T0_MS, now_s=clock)
    collector.poll()
    assert collector.stats()["source_error"] == "grid source is down"
    calls = source.calls
    clock.now += 1
    collector.poll()
    assert source.calls == calls  # backing off for 2 s
    clock.now += 1.5
    collector.poll()  # second failure: next wait 4 s
    clock.now += 3
    collector.poll()
    assert source.calls == calls + 1
    source.down = False
    clock.now += 1.5
    collector.poll()
    assert store.count_samples("d1") == 12 and collector.stats()["totals"]["source_errors"] == 2


def test_recent_window_survives_a_restart(cfg, store):
    clock = Clock(T0_MS / 1000 + 50)
    source = GridSource(["d1"], clock)
    first = Collector(cfg, source, store, ["d1"], "c", start_ms=T0_MS, now_s=clock)
    while not first.poll().caught_up:
        pass
    again = Collector(cfg, source, store, ["d1"], "c", start_ms=T0_MS, now_s=clock)
    window = again.recent_frames(["zz", "d1"])  # only the devices it collects
    # /v1/predict's window, or all there is
    predict_rows = cfg.detector.window_steps + 1 + cfg.detector.smoothing
    assert set(window["device_id"]) == {"d1"}
    assert len(window) == min(store.count_samples("d1"), predict_rows)
    assert window["timestamp"].is_monotonic_increasing
    assert window["timestamp"].iloc[-1] == pd.Timestamp(T0_MS + 50_000, unit="ms", tz="UTC")
    assert again.recent_frames(["zz"]).empty


def test_no_devices_is_an_error(cfg, store):
    with pytest.raises(SourceError, match="no devices"):
        Collector(cfg, GridSource([], Clock(0)), store, [], "c")


def test_a_fresh_collector_on_a_replay_starts_at_its_first_sample(cfg, store, tmp_path):
    from eyenet.sources.replay import ReplaySource

    path = tmp_path / "feed.csv"
    stamps = pd.date_range("2024-01-01", periods=50, freq="1s", tz="UTC")
    pd.DataFrame({"device_id": "r1", "timestamp": stamps, "bytes_in": np.arange(50.0) * 100,
                  "latency": 5.0}).to_csv(path, index=False)
    source = ReplaySource(cfg, [str(path)], speed=float("inf"))
    collector = Collector(cfg, source, store, ["r1"], "replay")
    while not collector.poll().caught_up:
        pass
    assert store.count_samples("r1") == 50, "the first row is not skipped"


def test_a_vanished_device_is_reported_silent_and_the_others_go_on(cfg, store):
    from eyenet.sources.simulator import SimulatedSource

    config = EyeNetConfig()
    clock = Clock(T0_MS / 1000 + 60)
    source = SimulatedSource(config, devices=3, seed=2, start_ms=T0_MS, origin_wall_s=T0_MS / 1000,
                             vanish={"dev-0001": T0_MS + 20_000}, clock=clock)
    collector = Collector(config, source, store, source.devices(), "sim", start_ms=T0_MS, now_s=clock)
    collector.poll()
    assert collector.stats()["silent_devices"] == ["dev-0001"]
    assert store.count_samples("dev-0001") == 20 and store.count_samples("dev-0000") == 60


def test_a_replay_ends_at_its_last_sample_and_a_slower_source_than_the_config_is_refused(cfg, tmp_path):
    from actors.pipeline import start_pipeline
    from eyenet.errors import PipelineError
    from eyenet.sources.replay import ReplaySource

    path = tmp_path / "slow.csv"
    stamps = pd.date_range("2024-01-01", periods=20, freq="300s", tz="UTC")
    pd.DataFrame({"device_id": "r1", "timestamp": stamps, "bytes_in": 1.0,
                  "latency": 5.0}).to_csv(path, index=False)
    clock = Clock(1000.0)
    source = ReplaySource(cfg, [str(path)], speed=1e6, origin_wall_s=1000.0, clock=clock)
    clock.now += 3600
    assert source.now_ms() == int(stamps[-1].value // 1_000_000), "a finished replay does not run on"
    with pytest.raises(PipelineError, match="sample_interval_s"):
        start_pipeline(cfg, "replay", {"paths": [str(path)]})
