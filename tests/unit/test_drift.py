"""Drift scores from binned counts: clean feeds stay quiet, shifted ones score high, the
window slides, and the state survives a JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eyenet.detection.features import feature_reference
from eyenet.monitoring.drift import DriftTracker, bin_counts, ks, psi
from tests.helpers import Clock

NAMES = ["bytes_in", "latency"]


def _data(rng: np.random.Generator, n: int, shift_std: float = 0.0) -> np.ndarray:
    return np.column_stack([rng.normal(1000.0 + shift_std * 100.0, 100.0, n),
                            rng.gamma(2.0, 10.0, n) + shift_std * np.sqrt(200.0)])


@pytest.fixture(scope="module")
def reference() -> dict:
    return feature_reference(_data(np.random.default_rng(0), 20_000), NAMES)


def _tracker(reference: dict, clock: Clock, method: str = "psi", **kw) -> DriftTracker:
    opts = {"window_s": 600.0, "bucket_s": 60.0, "min_samples": 500, **kw}
    return DriftTracker(reference, method=method, now_s=clock, **opts)


def test_bin_counts_counts_finite_values_in_reference_bins(reference: dict) -> None:
    values = _data(np.random.default_rng(1), 1000)
    values[:10, 0] = np.nan
    values[10:15, 1] = np.inf
    counts = bin_counts(np.column_stack([values, np.ones(1000)]), [*NAMES, "unknown"], reference)
    assert set(counts) == set(NAMES)  # a feature without a reference is skipped
    assert counts["bytes_in"].sum() == 990 and counts["latency"].sum() == 995
    assert len(counts["bytes_in"]) == len(reference["bytes_in"]["bin_edges"]) + 1
    edges = np.asarray(reference["bytes_in"]["bin_edges"])
    col = values[10:, 0]
    assert counts["bytes_in"][0] == int((col < edges[0]).sum())
    # windows x steps x features flattens to rows
    windows = values[:990].reshape(99, 10, 2)
    assert np.array_equal(bin_counts(windows, NAMES, reference)["latency"],
                          bin_counts(values[:990], NAMES, reference)["latency"])
    with pytest.raises(ValueError, match="names"):
        bin_counts(values, ["only_one"], reference)
    assert bin_counts(None, NAMES, reference) == {} and bin_counts(values, NAMES, None) == {}
    assert bin_counts(np.empty((0,)), NAMES, reference) == {}
    assert bin_counts(np.empty((0, 2)), NAMES, reference) == {}


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_clean_feed_is_quiet_and_shifted_feed_drifts(reference: dict, method: str) -> None:
    clock = Clock(1_700_000_000.0)
    clean, shifted = _tracker(reference, clock, method), _tracker(reference, clock, method)
    rng = np.random.default_rng(2)
    for _ in range(5):
        clean.add(bin_counts(_data(rng, 1000), NAMES, reference))
        shifted.add(bin_counts(_data(rng, 1000, shift_std=2.0), NAMES, reference))
        clock.t += 30
    quiet, loud = clean.scores(), shifted.scores()
    limit = 0.1 if method == "psi" else 0.05
    assert all(s is not None and 0 <= s < limit for s in quiet.values()), quiet
    assert all(s is not None and s > 0.3 for s in loud.values()), loud


def test_scores_match_the_formulas() -> None:
    ref = np.array([0.25, 0.25, 0.5])
    counts = np.array([50, 0, 50])
    cur = np.maximum(counts / 100, 1e-4)
    expected = float(np.sum((cur - ref) * np.log(cur / ref)))
    assert psi(counts, ref) == pytest.approx(expected)
    assert ks(counts, ref) == pytest.approx(0.25)  # CDFs (0.5, 0.5) vs (0.25, 0.5)
    assert psi(np.array([25, 25, 50]), ref) == pytest.approx(0.0, abs=1e-12)


def test_too_few_samples_give_no_score(reference: dict) -> None:
    clock = Clock(1_700_000_000.0)
    tracker = _tracker(reference, clock, min_samples=500)
    tracker.add(bin_counts(_data(np.random.default_rng(3), 499), NAMES, reference))
    assert tracker.scores() == {"bytes_in": None, "latency": None}
    tracker.add(bin_counts(_data(np.random.default_rng(4), 1), NAMES, reference))
    assert all(s is not None for s in tracker.scores().values())


def test_old_buckets_fall_out_of_the_window(reference: dict) -> None:
    clock = Clock(1_700_000_000.0)
    tracker = _tracker(reference, clock, window_s=600.0, bucket_s=60.0, min_samples=1)
    rng = np.random.default_rng(5)
    tracker.add(bin_counts(_data(rng, 1000, shift_std=2.0), NAMES, reference))  # old, shifted
    clock.t += 300
    tracker.add(bin_counts(_data(rng, 1000), NAMES, reference))  # recent, clean
    assert tracker.sample_counts() == {"bytes_in": 2000, "latency": 2000}
    assert tracker.scores()["bytes_in"] > 0.3
    clock.t += 360  # the first bucket's span now ends before now - window_s
    assert tracker.sample_counts() == {"bytes_in": 1000, "latency": 1000}
    assert tracker.scores()["bytes_in"] < 0.1
    clock.t += 700
    assert tracker.sample_counts() == {} and tracker.scores() == {"bytes_in": None, "latency": None}
    assert len(tracker.to_state()["buckets"]) == 0


def test_memory_is_bounded_by_buckets_not_values(reference: dict) -> None:
    clock = Clock(1_700_000_000.0)
    tracker = _tracker(reference, clock, window_s=600.0, bucket_s=60.0)
    counts = bin_counts(_data(np.random.default_rng(6), 100), NAMES, reference)
    for _ in range(1000):
        tracker.add(counts)
        clock.t += 5
    assert len(tracker.to_state()["buckets"]) <= 11


def test_late_counts_join_their_bucket_and_bad_shapes_are_rejected(reference: dict) -> None:
    clock = Clock(1_700_000_000.0)
    tracker = _tracker(reference, clock, min_samples=1)
    ones = {name: np.ones(len(reference[name]["bin_fractions"]), dtype=int) for name in NAMES}
    tracker.add(ones)
    clock.t += 180
    tracker.add(ones)
    tracker.add(ones, at_s=clock.t - 120)  # late: a bucket between the two
    tracker.add(ones, at_s=clock.t - 10_000)  # older than the window: ignored
    tracker.add({"bytes_in": [1, 2, 3]})  # wrong number of bins
    starts = [b[0] for b in tracker.to_state()["buckets"]]
    assert starts == sorted(starts) and len(starts) == 3
    assert tracker.sample_counts()["bytes_in"] == 3 * len(ones["bytes_in"])
    assert tracker.rejected == 1


def test_state_round_trips_through_json_and_checks_the_reference(reference: dict) -> None:
    clock = Clock(1_700_000_000.0)
    tracker = _tracker(reference, clock, method="ks")
    tracker.add(bin_counts(_data(np.random.default_rng(7), 2000, shift_std=1.0), NAMES, reference))
    state = json.loads(json.dumps(tracker.to_state()))
    restored = DriftTracker.from_state(state, reference, now_s=clock)
    assert restored.method == "ks" and restored.scores() == tracker.scores()

    fresh = _tracker(reference, clock)
    assert fresh.load_state(state) and fresh.sample_counts() == tracker.sample_counts()

    other = feature_reference(_data(np.random.default_rng(8), 5000, shift_std=3.0), NAMES)
    changed = _tracker(other, clock)
    assert not changed.load_state(state) and changed.sample_counts() == {}


def test_rejects_unknown_method(reference: dict) -> None:
    with pytest.raises(ValueError, match="psi"):
        DriftTracker(reference, method="chi2")
