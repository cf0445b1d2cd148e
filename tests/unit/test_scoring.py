"""Scores from forecast errors in eyenet.detection.scoring: the POT threshold, calibration to 0..1,
the smoothed error profile and per-row attribution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.detection.scoring import MIN_TAIL_POINTS, Calibrator, pot_threshold, smoothed_errors, top_features

# -- pot_threshold --------------------------------------------------------------------------


@pytest.mark.parametrize("risk", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pot_threshold_matches_the_exponential_quantile(risk, seed):
    """On Exp(1) samples the threshold at risk r is close to the true quantile -ln(r)."""
    scores = np.random.default_rng(seed).exponential(1.0, 20_000)
    threshold = pot_threshold(scores, risk, init_quantile=0.98)
    assert threshold == pytest.approx(-np.log(risk), rel=0.25)
    assert threshold > np.quantile(scores, 0.98)


def test_pot_threshold_extrapolates_beyond_the_sample():
    """A risk below 1/n still gives a finite threshold, beyond the sample's upper tail."""
    scores = np.random.default_rng(3).exponential(1.0, 5_000)
    threshold = pot_threshold(scores, 1e-6, init_quantile=0.98)
    assert np.isfinite(threshold) and threshold > np.quantile(scores, 0.999)


def test_pot_threshold_falls_back_to_the_quantile_for_a_short_tail():
    """Fewer than MIN_TAIL_POINTS above the initial quantile: the empirical (1 - risk) quantile
    (never below the initial quantile)."""
    scores = np.random.default_rng(0).exponential(1.0, 100)
    assert int((scores > np.quantile(scores, 0.98)).sum()) < MIN_TAIL_POINTS
    assert pot_threshold(scores, 0.001, 0.98) == pytest.approx(np.quantile(scores, 0.999))
    assert pot_threshold(scores, 0.2, 0.98) == pytest.approx(np.quantile(scores, 0.98))


def test_pot_threshold_with_a_risk_above_the_tail_is_the_quantile():
    """A risk larger than the tail's share is read off the empirical distribution."""
    scores = np.random.default_rng(0).exponential(1.0, 20_000)
    assert pot_threshold(scores, 0.05, 0.98) == pytest.approx(np.quantile(scores, 0.95))


def test_pot_threshold_of_a_flat_tail_is_finite():
    """A degenerate tail (all excesses equal) falls back instead of dividing by zero."""
    scores = np.r_[np.zeros(980), np.full(20, 5.0)]
    assert pot_threshold(scores, 0.001, 0.98) == pytest.approx(5.0)


def test_pot_threshold_ignores_non_finite_and_needs_scores():
    """NaN/inf are dropped; no finite score at all raises ValueError."""
    scores = np.random.default_rng(0).exponential(1.0, 20_000)
    dirty = np.r_[scores, np.nan, np.inf, -np.inf]
    assert pot_threshold(dirty, 1e-3, 0.98) == pot_threshold(scores, 1e-3, 0.98)
    with pytest.raises(ValueError, match="no finite"):
        pot_threshold(np.array([]), 1e-3, 0.98)
    with pytest.raises(ValueError, match="no finite"):
        pot_threshold(np.array([np.nan, np.inf]), 1e-3, 0.98)


# -- Calibrator -----------------------------------------------------------------------------

def fitted_calibrator() -> Calibrator:
    return Calibrator.fit(np.random.default_rng(0).exponential(1.0, 5_000), risk=1e-3, init_quantile=0.98)


def test_calibrator_maps_baseline_to_zero_and_threshold_to_half():
    """The validation median scores 0, the POT threshold 0.5."""
    scores = np.random.default_rng(0).exponential(1.0, 5_000)
    cal = Calibrator.fit(scores, risk=1e-3, init_quantile=0.98)
    assert cal.baseline == pytest.approx(np.median(scores))
    assert cal.threshold == pytest.approx(pot_threshold(scores, 1e-3, 0.98))
    assert cal(np.array([cal.baseline]))[0] == 0.0
    assert cal(np.array([cal.threshold]))[0] == pytest.approx(0.5)


def test_calibrator_is_monotonic_and_bounded():
    """Non-decreasing everywhere, strictly increasing above the baseline, 0 at and below it,
    and below 1 even for huge raw scores."""
    cal = fitted_calibrator()
    raw = np.r_[-5.0, 0.0, np.linspace(0.0, 100.0, 2_001), 1e6, 1e12]
    out = cal(raw)
    assert np.all(np.diff(out) >= 0)
    above = raw > cal.baseline
    assert np.all(np.diff(out[above][:-1]) > 0)
    assert np.all(out[raw <= cal.baseline] == 0.0)
    assert np.all((out >= 0.0) & (out < 1.0))


def test_calibrator_of_a_flat_validation_score_has_a_usable_scale():
    """A perfect forecaster (all validation scores equal) still gets threshold > baseline."""
    cal = Calibrator.fit(np.full(500, 2.0), risk=1e-3, init_quantile=0.98)
    assert cal.threshold > cal.baseline == 2.0
    out = cal(np.array([2.0, 3.0]))
    assert out[0] == 0.0 and 0.5 < out[1] < 1.0


def test_calibrator_round_trips_through_a_dict():
    """to_dict/from_dict keep baseline and threshold, so scores are identical."""
    cal = fitted_calibrator()
    again = Calibrator.from_dict(cal.to_dict())
    assert again == cal
    raw = np.linspace(0, 20, 50)
    np.testing.assert_array_equal(again(raw), cal(raw))


def test_calibrator_needs_finite_scores():
    """Calibrating on nothing finite raises ValueError."""
    with pytest.raises(ValueError):
        Calibrator.fit(np.array([np.nan]), risk=1e-3, init_quantile=0.98)


# -- smoothed_errors ------------------------------------------------------------------------

def test_smoothing_restarts_at_segment_boundaries():
    """The EWM of each segment starts from that segment's first value, by hand:
    span 3 -> alpha 0.5, adjusted mean (x1 + 0.5 x0) / 1.5."""
    errors = np.array([[4.0], [1.0], [1.0], [100.0], [0.0]])
    out = smoothed_errors(errors, np.array([0, 0, 0, 1, 1]), steps=3)
    assert out[0, 0] == 4.0
    assert out[1, 0] == pytest.approx((1.0 + 0.5 * 4.0) / 1.5)
    assert out[2, 0] == pytest.approx((1.0 + 0.5 * 1.0 + 0.25 * 4.0) / 1.75)
    assert out[3, 0] == 100.0, "the new segment carried the old one's errors"
    assert out[4, 0] == pytest.approx(50.0 / 1.5)


def test_smoothing_matches_a_per_segment_ewm_per_column():
    """Every column and segment equals pandas' EWM of that column within that segment."""
    rng = np.random.default_rng(0)
    errors = rng.exponential(1.0, (40, 3))
    segments = np.repeat([0, 1, 2], [10, 25, 5])
    out = smoothed_errors(errors, segments, steps=8)
    for seg in range(3):
        rows = segments == seg
        expected = pd.DataFrame(errors[rows]).ewm(span=8, adjust=True).mean().to_numpy()
        np.testing.assert_allclose(out[rows], expected)


def test_smoothing_keeps_leading_missing_rows_missing():
    """Unscored rows (NaN) at a segment start stay NaN; scored rows after them are finite."""
    errors = np.array([[np.nan], [np.nan], [2.0], [4.0]])
    out = smoothed_errors(errors, np.zeros(4, np.int64), steps=4)
    assert np.isnan(out[:2, 0]).all() and np.isfinite(out[2:, 0]).all()
    assert out[2, 0] == 2.0


def test_smoothing_matches_pandas_with_missing_values_and_interleaved_segments():
    """Missing values inside a segment decay the profile without adding to it (pandas'
    ignore_na=False), and segments need not be contiguous runs of rows."""
    rng = np.random.default_rng(1)
    errors = rng.exponential(1.0, (60, 2))
    errors[rng.random((60, 2)) < 0.2] = np.nan
    segments = rng.integers(0, 4, 60)
    out = smoothed_errors(errors, segments, steps=6)
    for seg in range(4):
        rows = segments == seg
        expected = pd.DataFrame(errors[rows]).ewm(span=6, adjust=True).mean().to_numpy()
        np.testing.assert_allclose(out[rows], expected)


def test_one_step_smoothing_is_the_identity():
    """steps <= 1 returns the squared errors unchanged."""
    errors = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(smoothed_errors(errors, np.zeros(3, np.int64), 1), errors)


# -- top_features ---------------------------------------------------------------------------


def test_a_prior_starts_each_segment_as_a_long_normal_history_would():
    """With a prior, each segment's profile is the EWM of an infinitely long history at the
    prior level followed by the errors; leading missing rows stay missing."""
    rng = np.random.default_rng(2)
    errors = rng.exponential(1.0, (12, 2))
    errors[6] = np.nan
    segments = np.array([0] * 7 + [1] * 5)
    prior = np.array([0.5, 2.0])
    out = smoothed_errors(errors, segments, steps=5, prior=prior)
    for seg in (0, 1):
        rows = segments == seg
        long_history = np.vstack([np.tile(prior, (2000, 1)), errors[rows]])
        want = pd.DataFrame(long_history).ewm(span=5, adjust=True).mean().to_numpy()[2000:].copy()
        want[np.cumsum(np.isfinite(errors[rows]), axis=0) == 0] = np.nan
        np.testing.assert_allclose(out[rows], want, rtol=1e-9)
    lead = np.r_[[np.nan, np.nan], [1.0, 1.0]].reshape(2, 2)
    assert np.isnan(smoothed_errors(lead, np.zeros(2, np.int64), 4, prior=prior)[0]).all()


def test_a_segments_first_points_on_normal_data_are_judged_like_the_rest():
    """Regression: a segment's profile started empty, so its first points were the mean of
    one, two, three raw errors, far noisier than the smoothed scores the threshold was
    fitted on: a pipeline started on an empty store flagged quiet devices at its first
    scored points (the chaos soak: 2 of 95). Started from the typical normal error, the
    first points of many fresh normal segments alarm no more often than later ones."""
    from eyenet.detection.detector import Detector
    from tests.synthetic import METRICS, config, telemetry

    cfg = config(smoothing_steps=30)
    detector = Detector(cfg, METRICS, gap_s=3.0).fit(telemetry(900))
    assert detector.error_prior is not None and (detector.error_prior > 0).all()
    fresh = pd.concat([telemetry(120, start_s=5000 + 1000 * k, seed=10 + k) for k in range(12)],
                      ignore_index=True)
    scored = detector.score(fresh)
    scored = scored[scored["raw_score"].notna()].copy()
    scored["position"] = scored.groupby(["device_id", scored["timestamp"].dt.floor("1000s")]).cumcount()
    early = scored[scored["position"] < 5]["score"]
    late = scored[scored["position"] >= 30]["score"]
    assert early.quantile(0.9) <= late.quantile(0.99)


def test_top_features_are_ordered_largest_first():
    """Each row names its k largest contributions, largest first."""
    contrib = np.array([[0.1, 5.0, 2.0, 0.0], [9.0, 1.0, 3.0, 4.0]])
    names = ["a", "b", "c", "d"]
    assert top_features(contrib, names, 2) == [["b", "c"], ["a", "d"]]
    assert top_features(contrib, names, 1) == [["b"], ["a"]]


def test_top_features_with_k_above_the_feature_count():
    """k larger than the number of features names every feature once."""
    contrib = np.array([[1.0, 3.0, 2.0]])
    assert top_features(contrib, ["a", "b", "c"], 10) == [["b", "c", "a"]]


def test_top_features_ties_keep_feature_order_and_empty_input():
    """Equal contributions keep the feature order; no rows gives an empty list."""
    assert top_features(np.zeros((1, 3)), ["a", "b", "c"], 2) == [["a", "b"]]
    assert top_features(np.empty((0, 3)), ["a", "b", "c"], 2) == []
