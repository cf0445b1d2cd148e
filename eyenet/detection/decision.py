"""The decision rule: the last link of the chain, after the calibrator (Merlion's post-rule).

The calibrator puts every kind's score on one 0..1 scale with the label-free threshold at
0.5; the rule says where each device's alarm starts. Per-device thresholds live here and
nowhere else, so offline detection, the feature pool and Serve decide alike.

The calibrator's threshold is fitted on the whole fleet's held-out scores, so a device the
network forecasts less well than the others (an odd packet size, a noisier link) sits near
it all the time and alarms on its own noise: in the demo's fleet, two of 20 devices had a
held-out median score of 0.42 and flagged a quarter of their quiet live points. Such a
device gets its own threshold, with the same peaks-over-threshold rule and risk.

That threshold is not read from the device's own tail alone. A device's held-out share is a
few hundred smoothed, strongly autocorrelated scores (in the demo six minutes, about a dozen
independent values), and a 1 % tail read from so few is low as often as not: a demo device
whose threshold was read so flagged 3 % of its whole history and opened false alerts in the
live phase. So each device is taken as the fleet's shape at its own place and size: its
median and interquartile range, which a few hundred points do pin down, place it; the tail is
fitted once on every device's scores in those units (thousands of points). A lone series (an
SMD machine, a NAB series) gets back exactly its own tail, so its rule is unchanged. The rule
only ever raises a threshold, and only for a loud device: one with more than twice its share
of held-out scores above the fleet's 95th percentile. A tail as far out as the risk cannot
tell loud from alike on a few hundred points (at a 0.1 % risk, a device of a demo fleet whose
scores sat just under the threshold all the time had no held-out point above it and kept it,
then alarmed on 2.5 % of its quiet live points); the 95th percentile holds about 5 % of an
alike device's points, enough to count. A device it suits keeps the fleet's threshold.
Operators' ``detector.device_thresholds`` override both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eyenet.detection.scoring import Calibrator, pot_threshold

# The calibrated score of the fitted threshold (see eyenet.detection.scoring.Calibrator).
CALIBRATED_THRESHOLD = 0.5
# Held-out normal points a device needs before its own tail is read; with fewer (a 1 % risk
# would rest on one point) the device keeps the fleet's threshold.
MIN_DEVICE_POINTS = 100
# A device's threshold must exceed the fleet's by this much to be kept (a device whose tail
# matches the fleet's reads back as 0.5 give or take rounding).
MIN_RAISE = 1e-3
# A device gets its own threshold only when more than LOUD_FACTOR times its share of held-out
# scores lie above the fleet's LOUD_QUANTILE: devices alike up to sampling noise keep one
# threshold (a median or spread a little above the fleet's is noise, not a louder link).
LOUD_QUANTILE = 0.95
LOUD_FACTOR = 2.0


@dataclass
class DecisionRule:
    default: float = CALIBRATED_THRESHOLD
    devices: dict[str, float] = field(default_factory=dict)

    def thresholds(self, device_ids: np.ndarray, alias: Callable[[str], str] | None = None) -> np.ndarray:
        """Each row's threshold on the calibrated score; ``alias`` maps a row key to its
        device where the keys are not device ids (Serve's windows are keyed one each)."""
        if not self.devices:
            return np.full(len(device_ids), self.default)
        # one lookup per run of equal keys (rows come grouped by device): sorting the keys of
        # a live call's hundred thousand rows cost more than its decisions
        keys = np.asarray(device_ids, dtype=object)
        if len(keys) == 0:
            return np.empty(0, np.float64)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        names = [str(k) for k in keys[starts].tolist()]
        devices = names if alias is None else [alias(n) for n in names]
        per_run = np.array([self.devices.get(d, self.default) for d in devices], np.float64)
        return np.repeat(per_run, np.diff(np.r_[starts, len(keys)]))

    def decide(self, score: np.ndarray, scored: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """Alarm where a scored row's calibrated score is above its device's threshold."""
        return np.asarray(scored, bool) & (np.asarray(score) > thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "devices": dict(self.devices)}

    @classmethod
    def fit(cls, raw: np.ndarray, device_ids: np.ndarray, calibrator: Calibrator, *, risk: float,
            init_quantile: float, overrides: dict[str, float] | None = None) -> DecisionRule:
        """The rule for held-out normal ``raw`` scores of ``device_ids``: each device with
        ``MIN_DEVICE_POINTS`` scores is placed by its median and interquartile range, the
        peaks-over-threshold tail at ``risk`` is fitted on all of them in those units, and a
        loud device (more than ``LOUD_FACTOR`` times its share of scores above the fleet's
        ``LOUD_QUANTILE``) whose threshold so read (calibrated) lies above the fleet's keeps it;
        ``overrides`` (operators' thresholds) win over both."""
        raw, device_ids = np.asarray(raw, np.float64), np.asarray(device_ids).astype(str)
        finite = np.isfinite(raw)
        raw, device_ids = raw[finite], device_ids[finite]
        loud_above = float(np.quantile(raw, LOUD_QUANTILE)) if len(raw) else np.inf
        order = np.argsort(device_ids, kind="stable")
        names, starts = np.unique(device_ids[order], return_index=True)
        places: dict[str, tuple[float, float]] = {}
        standardised = []
        for name, rows in zip(names, np.split(order, starts[1:]), strict=True):
            own = raw[rows]
            if len(own) < MIN_DEVICE_POINTS:
                continue
            loud = float((own > loud_above).mean()) > LOUD_FACTOR * (1.0 - LOUD_QUANTILE)
            q25, median, q75 = np.quantile(own, [0.25, 0.5, 0.75])
            if q75 > q25:  # a flat device has no spread to scale the fleet's tail by
                standardised.append((own - median) / (q75 - q25))
                if loud:
                    places[str(name)] = (float(median), float(q75 - q25))
        devices: dict[str, float] = {}
        if places:  # the tail is every device's; only the loud ones are placed on it
            tail = pot_threshold(np.concatenate(standardised), risk, init_quantile)
            for name, (median, spread) in places.items():
                threshold = float(calibrator(np.array([median + tail * spread]))[0])
                if threshold > CALIBRATED_THRESHOLD + MIN_RAISE:
                    devices[name] = threshold
        devices.update(overrides or {})
        return cls(CALIBRATED_THRESHOLD, devices)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionRule:
        return cls(float(data.get("default", CALIBRATED_THRESHOLD)),
                   {str(k): float(v) for k, v in (data.get("devices") or {}).items()})
