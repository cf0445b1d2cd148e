"""The pipeline bench's training plan holds validation windows at any fleet size."""

from __future__ import annotations

import pytest

from eyenet.config import EyeNetConfig
from jobs.bench_pipeline import TRAIN_DEVICE_SAMPLES, training_plan


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
