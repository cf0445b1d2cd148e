"""A collector polling a simulated fleet that sends bad input, and its poll timing."""

from __future__ import annotations

import numpy as np
import pytest

from eyenet.config import DEFAULT_COUNTER_METRICS, EyeNetConfig
from eyenet.sources.simulator import GARBAGE, SimulatedSource
from eyenet.streaming.collector import Collector
from eyenet.telemetry.schema import to_ms
from tests.helpers import Clock

NOW_S = 1_740_787_200.0  # 2025-03-01T00:00Z


# -- the collector over a fleet sending bad input ---------------------------------------------------

def test_collector_counts_every_injected_defect_and_stores_the_rest(store):
    cfg = EyeNetConfig(streaming={"fetch_chunk_s": 120})  # the backlog comes in several polls
    clock = Clock(NOW_S)
    src = SimulatedSource(cfg, devices=5, seed=1, garbage_rate=0.05, clock=clock)
    start_ms = src.now_ms() - 600_000
    collector = Collector(cfg, src, store, src.devices(), "sim-0", start_ms=start_ms, now_s=clock)
    polls = 0
    while not collector.poll().caught_up:
        polls += 1
    assert polls >= 4
    for _ in range(6):  # then live: 5 s between polls
        clock.now += 5
        assert collector.poll().caught_up
    until_ms = src.now_ms()
    assert until_ms == start_ms + 630_000

    stats = collector.stats()
    injected = src.garbage_between(start_ms, until_ms, src.devices())
    kinds = {reason.split(":")[0] for reason in injected}
    assert kinds == set(GARBAGE)  # every kind of defect occurred
    rejected_kinds = ("future_timestamp", "duplicate")
    assert stats["rejected"] == {k: injected[k] for k in rejected_kinds}
    value_defects = {k: n for k, n in injected.items() if k.split(":")[0] not in rejected_kinds}
    assert {k: n for k, n in stats["repaired"].items() if k.split(":")[0] in GARBAGE} == value_defects
    # the only other repairs: each device's first counter sample starts its baseline
    others = {k: n for k, n in stats["repaired"].items() if k.split(":")[0] not in GARBAGE}
    assert others == {f"counter_baseline:{m}": 5 for m in DEFAULT_COUNTER_METRICS}

    totals = stats["totals"]
    ticks = 5 * 630
    assert totals["fetched"] == ticks + injected["duplicate"]
    assert totals["rejected"] == injected["future_timestamp"] + injected["duplicate"]
    assert totals["accepted"] == totals["fetched"] - totals["rejected"]
    assert totals["accepted"] == ticks - injected["future_timestamp"]
    assert totals["stored"] == totals["accepted"] == store.count_samples()
    assert stats["pending_samples"] == 0 and stats["lag_s"] == 0.0

    stored = store.read_range()
    assert not stored.duplicated(["device_id", "timestamp"]).any()
    stamps = to_ms(stored["timestamp"])
    assert (stamps > start_ms).all() and (stamps <= until_ms).all()  # no future-stamped sample
    values = stored[cfg.metrics].to_numpy(np.float64)
    assert (values[np.isfinite(values)] >= 0).all()
    missing = int(np.isnan(values).sum())
    # defective values become missing (NaN) rather than being stored as they came
    assert missing >= sum(value_defects.values())


def test_collectors_poll_just_after_the_next_grid_tick():
    from actors.collector import POLL_AFTER_TICK_S, next_poll_delay_s

    # mid-interval: wait for the next tick plus the offset
    assert next_poll_delay_s(100.3, 1.0, 100.3) == pytest.approx(0.7 + POLL_AFTER_TICK_S)
    # a poll that started just before a tick polls just after it (it waited a whole interval)
    assert next_poll_delay_s(100.97, 1.0, 100.96) == pytest.approx(0.03 + POLL_AFTER_TICK_S)
    assert next_poll_delay_s(300.0, 60.0, 290.0) == pytest.approx(POLL_AFTER_TICK_S)
    # a poll that began at the tick, before its offset, may have missed it: poll after it
    assert next_poll_delay_s(101.03, 1.0, 101.02) == pytest.approx(101.0 + POLL_AFTER_TICK_S - 101.03)
    # one that began after the offset saw it: the next tick
    assert next_poll_delay_s(101.2, 1.0, 101.0 + POLL_AFTER_TICK_S) == pytest.approx(0.8 + POLL_AFTER_TICK_S)
    # a slow poll that overran the next tick polls again at once
    assert next_poll_delay_s(102.5, 1.0, 100.0) == 0.0
