"""The decision rule after the calibrator: per-device thresholds fitted on held-out normal
scores, operators' overrides, and a fleet where one device is forecast worse than the rest."""

from __future__ import annotations

import numpy as np
import pytest

from eyenet.detection.decision import CALIBRATED_THRESHOLD, MIN_DEVICE_POINTS, DecisionRule
from eyenet.detection.detector import Detector
from eyenet.detection.scoring import Calibrator
from tests.synthetic import METRICS, config, telemetry

RISK, INIT_QUANTILE = 0.01, 0.98


def held_out(seed: int = 0, points: int = 2000, loud_shift: float = 3.0):
    """Raw scores of ten devices: a..i alike, c's noise sitting ``loud_shift`` higher."""
    rng = np.random.default_rng(seed)
    raw = {d: rng.exponential(1.0, points) for d in "abdefghij"}
    raw["c"] = loud_shift + rng.exponential(1.0, points)
    devices = np.concatenate([[d] * points for d in raw])
    values = np.concatenate(list(raw.values()))
    return values, devices


def fitted(values, devices, **kw) -> tuple[DecisionRule, Calibrator]:
    calibrator = Calibrator.fit(values, risk=RISK, init_quantile=INIT_QUANTILE)
    rule = DecisionRule.fit(values, devices, calibrator, risk=RISK, init_quantile=INIT_QUANTILE, **kw)
    return rule, calibrator


def test_a_device_scored_higher_than_the_fleet_gets_its_own_threshold():
    """c's held-out scores sit above the fleet's: its threshold rises until it alarms at
    about the configured risk on its own normal scores; the others keep the fleet's 0.5."""
    values, devices = held_out()
    rule, calibrator = fitted(values, devices)
    assert set(rule.devices) == {"c"} and rule.devices["c"] > CALIBRATED_THRESHOLD
    score = calibrator(values)
    thresholds = rule.thresholds(devices)
    alarms = rule.decide(score, np.ones(len(score), bool), thresholds)
    fleet_alarms = DecisionRule().decide(score, np.ones(len(score), bool), DecisionRule().thresholds(devices))
    own = devices == "c"
    # judged by the fleet's threshold, c alone fills the fleet's 1 % tail: 10 % of its points
    assert fleet_alarms[own].mean() > 5 * RISK
    assert alarms[own].mean() == pytest.approx(RISK, abs=0.01)
    np.testing.assert_array_equal(alarms[~own], fleet_alarms[~own])
    assert (thresholds[~own] == CALIBRATED_THRESHOLD).all()


def test_a_device_like_the_fleet_keeps_the_fleets_threshold():
    """One device alone (an SMD machine, a NAB series): its own tail is the fleet's, so the
    rule has no device threshold and the decision is the calibrator's 0.5."""
    values, devices = held_out()
    alone = devices == "a"
    rule, _ = fitted(values[alone], devices[alone])
    assert rule.devices == {}


def test_the_rule_never_lowers_a_threshold_below_the_fleets():
    """A device quieter than the fleet is not made more sensitive than it."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.exponential(1.0, 2000), 0.1 * rng.exponential(1.0, 2000)])
    devices = np.array(["loud"] * 2000 + ["calm"] * 2000)
    rule, _ = fitted(values, devices)
    assert "calm" not in rule.devices


def test_a_device_with_too_few_held_out_points_keeps_the_fleets_threshold():
    values, devices = held_out(points=MIN_DEVICE_POINTS - 1)
    values = np.r_[values, np.random.default_rng(1).exponential(1.0, 5000)]
    devices = np.r_[devices, ["d"] * 5000]
    rule, _ = fitted(values, devices)
    assert "c" not in rule.devices


def test_operators_thresholds_override_fitted_ones():
    values, devices = held_out()
    rule, _ = fitted(values, devices, overrides={"c": 0.3, "z": 0.9})
    assert rule.devices == {"c": 0.3, "z": 0.9}
    assert rule.thresholds(np.array(["a", "c", "z"])).tolist() == [CALIBRATED_THRESHOLD, 0.3, 0.9]


def test_the_rule_round_trips_through_a_dict():
    values, devices = held_out()
    rule, _ = fitted(values, devices)
    again = DecisionRule.from_dict(rule.to_dict())
    assert again == rule
    np.testing.assert_array_equal(again.thresholds(devices), rule.thresholds(devices))


def noisy_fleet(n: int, start_s: int = 0, seed: int = 0):
    """Ten devices; ``loud`` has ten times the others' noise (its own normal)."""
    frame = telemetry(n, start_s=start_s, seed=seed, devices=(*(f"r{i}" for i in range(9)), "loud"))
    loud = (frame["device_id"] == "loud").to_numpy()
    rng = np.random.default_rng(seed + 100)
    for m in METRICS:
        frame.loc[loud, m] += rng.normal(0, 5.0, int(loud.sum()))
    return frame


def test_a_fitted_detector_judges_its_loudest_device_by_that_devices_own_tail():
    """Fitted on a fleet with one loud device: that device gets its own threshold, saved with
    the model, so its quiet later hours stop alarming while a spike on it is still found."""
    det = Detector(config(kind="kmeans"), METRICS, gap_s=5).fit(noisy_fleet(1500))
    assert set(det.rule.devices) == {"loud"}
    later = noisy_fleet(600, start_s=1500, seed=1)
    step = np.arange(len(later)) % 600  # each device's rows in time order
    later.loc[(later["device_id"] == "loud").to_numpy() & (step >= 300) & (step < 320), "latency"] += 200.0
    out = det.score(later)
    loud = (out["device_id"] == "loud").to_numpy()
    quiet = loud & ((step < 300) | (step >= 360))
    alarms, fleet_alarms = out["is_anomaly"].to_numpy(), out["score"].to_numpy() > CALIBRATED_THRESHOLD
    assert fleet_alarms[quiet].mean() > 3 * alarms[quiet].mean()
    assert alarms[loud & (step >= 300) & (step < 320)].any()
    assert (out.loc[~loud, "threshold"] == CALIBRATED_THRESHOLD).all()


def smoothed_noise(rng: np.random.Generator, points: int, span: int = 30) -> np.ndarray:
    """A forecaster's smoothed squared error on normal data: an EWM of chi-square noise,
    autocorrelated over about ``span`` points as the pool's error profile is."""
    errors = rng.chisquare(5, points + 200)
    alpha = 2.0 / (span + 1)
    out = np.empty_like(errors)
    level = errors[0]
    for i, e in enumerate(errors):
        level += alpha * (e - level)
        out[i] = level
    return out[200:]


def test_a_loud_devices_threshold_holds_its_risk_on_fresh_data_from_a_short_held_out_share():
    """Regression: the threshold of a loud device was read from its own few hundred held-out
    scores alone; smoothed scores are so autocorrelated that this tail came out low as often
    as not, and on fresh normal data the device flagged 3.4 times the risk on average (a demo
    device: 3 %, false alerts in its live phase). Read as the fleet's tail at the device's
    own median and spread, it stays near the risk."""
    rates = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        held = {f"d{i:02d}": smoothed_noise(rng, 360) * (3.0 if i == 0 else 1.0) for i in range(20)}
        values = np.concatenate(list(held.values()))
        devices = np.concatenate([[d] * len(v) for d, v in held.items()])
        rule, calibrator = fitted(values, devices)
        assert set(rule.devices) == {"d00"}
        fresh = calibrator(smoothed_noise(rng, 20_000) * 3.0)
        rates.append(float((fresh > rule.devices["d00"]).mean()))
    assert np.mean(rates) < 2 * RISK


def test_a_device_shifted_and_spread_unlike_the_fleet_is_placed_by_both():
    """The fleet's tail is moved to a device's median and stretched by its spread, so a
    device whose scores are both offset and wider than the others' flags about the risk."""
    rng = np.random.default_rng(5)
    shifted = 4.0 + 2.5 * rng.exponential(1.0, 3000)
    values = np.concatenate([rng.exponential(1.0, 3000) for _ in range(9)] + [shifted])
    devices = np.repeat([f"d{i}" for i in range(10)], 3000)
    rule, calibrator = fitted(values, devices)
    fresh = calibrator(4.0 + 2.5 * rng.exponential(1.0, 50_000))
    assert (fresh > rule.devices["d9"]).mean() == pytest.approx(RISK, abs=0.004)


def test_a_loud_device_is_found_when_the_risk_is_too_small_to_count_its_tail():
    """Regression: loud used to mean "the fleet's threshold flags more than twice the risk of
    its held-out points". At one sample a second the risk is 3.5e-4, under one point of a
    device's 360, so a device sitting just under the threshold with none above it was taken
    as alike and kept the fleet's threshold: fresh normal scores then flagged 12 times the
    risk on average. Counted above the fleet's 95th percentile, it is found every time."""
    risk, rates = 30 / 86400, []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        held = {f"d{i:02d}": smoothed_noise(rng, 360) * (2.0 if i == 0 else 1.0) for i in range(20)}
        values = np.concatenate(list(held.values()))
        devices = np.concatenate([[d] * len(v) for d, v in held.items()])
        calibrator = Calibrator.fit(values, risk=risk, init_quantile=INIT_QUANTILE)
        rule = DecisionRule.fit(values, devices, calibrator, risk=risk, init_quantile=INIT_QUANTILE)
        assert set(rule.devices) == {"d00"}
        fresh = calibrator(smoothed_noise(rng, 20_000) * 2.0)
        rates.append(float((fresh > rule.devices["d00"]).mean()))
    assert np.mean(rates) < 5 * risk
