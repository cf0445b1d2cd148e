"""The pipeline bench: its training plan holds validation windows at any fleet size, and its
measured period starts only once the warm-up backlog is fetched and scored."""

from __future__ import annotations

import pytest

from eyenet.config import EyeNetConfig
from jobs.bench_pipeline import TRAIN_DEVICE_SAMPLES, cpu_used_s, training_plan, warmed_up


@pytest.mark.parametrize(("devices", "interval_s"), [(10, 1.0), (1000, 1.0), (3000, 1.0), (5000, 1.0),
                                                     (10_000, 10.0), (100_000, 1.0)])
def test_every_trained_device_holds_validation_windows_within_the_sample_budget(devices, interval_s):
    config = EyeNetConfig(sample_interval_s=interval_s)
    trained, rows = training_plan(config, devices)
    det = config.detector
    held_out = int(rows * det.validation_fraction)
    # `bench pipeline --devices 3000` failed here: 120 rows each, 24 held out, no window of 30
    assert held_out >= det.window_steps + 1
    assert 1 <= trained <= devices
    assert trained * rows <= max(TRAIN_DEVICE_SAMPLES, rows)


def test_a_small_fleet_trains_on_every_device():
    assert training_plan(EyeNetConfig(), 100)[0] == 100


def pipeline_stats(cursors_ms: list[int], stored: int, scored: int) -> dict:
    return {"collectors": [{"oldest_cursor_ms": c, "totals": {"stored": stored}, "lag_s": 1.0}
                           for c in cursors_ms], "stored": stored * len(cursors_ms), "scored": scored}


def test_the_warm_up_ends_only_when_every_collector_has_fetched_up_to_the_measured_period():
    origin_ms = 1_000_000
    # a lag of one 10 s tick used to pass: that tick was scored after the reset, at 11 s old
    assert not warmed_up(pipeline_stats([origin_ms, origin_ms - 10_000], 50, 100), origin_ms)
    assert not warmed_up(pipeline_stats([origin_ms, origin_ms], 50, 99), origin_ms)   # still scoring
    assert not warmed_up(pipeline_stats([origin_ms], 0, 0), origin_ms)                 # nothing stored
    assert not warmed_up(pipeline_stats([], 0, 0), origin_ms)
    assert warmed_up(pipeline_stats([origin_ms + 50, origin_ms], 50, 100), origin_ms)


def test_cpu_is_counted_from_each_process_own_start_of_the_period():
    before = {1: 10.0, 2: 5.0, 3: 7.0}
    after = {1: 12.5, 2: 5.0, 4: 1.5}     # 3 went away, 4 started during the period
    assert cpu_used_s(before, after) == pytest.approx(2.5 + 0.0 + 1.5)
