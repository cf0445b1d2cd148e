"""The decision rule: the last link of the chain, after the calibrator (Merlion's post-rule).

The calibrator puts every kind's score on one 0..1 scale with the label-free threshold at
0.5; the rule says where each device's alarm starts. Per-device thresholds live here and
nowhere else, so offline detection, the feature pool and Serve decide alike.

The calibrator's threshold is fitted on the whole fleet's held-out scores, so a device the
network forecasts less well than the others (an odd packet size, a noisier link) sits near
it all the time and alarms on its own noise: in the demo's fleet, two of 20 devices had a
held-out median score of 0.42 and flagged a quarter of their quiet live points. Such a
device gets its own threshold, read from its own held-out normal scores with the same
peaks-over-threshold rule and risk. It only ever raises a device's threshold: a device the
fleet's threshold already suits keeps it, so one rare excursion in a short held-out tail
cannot make a device more sensitive than the fleet. Operators' ``detector.device_thresholds``
override both.
"""

from __future__ import annotations

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


@dataclass
class DecisionRule:
    default: float = CALIBRATED_THRESHOLD
    devices: dict[str, float] = field(default_factory=dict)

    def thresholds(self, device_ids: np.ndarray) -> np.ndarray:
        """Each row's threshold on the calibrated score."""
        if not self.devices:
            return np.full(len(device_ids), self.default)
        names, inverse = np.unique(np.asarray(device_ids).astype(str), return_inverse=True)
        return np.array([self.devices.get(n, self.default) for n in names], np.float64)[inverse]

    def decide(self, score: np.ndarray, scored: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """Alarm where a scored row's calibrated score is above its device's threshold."""
        return np.asarray(scored, bool) & (np.asarray(score) > thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "devices": dict(self.devices)}

    @classmethod
    def fit(cls, raw: np.ndarray, device_ids: np.ndarray, calibrator: Calibrator, *, risk: float,
            init_quantile: float, overrides: dict[str, float] | None = None) -> DecisionRule:
        """The rule for held-out normal ``raw`` scores of ``device_ids``: a device whose own
        threshold (peaks over threshold at ``risk`` on its own scores, calibrated) lies above
        the fleet's keeps it; ``overrides`` (operators' thresholds) win over both."""
        raw, device_ids = np.asarray(raw, np.float64), np.asarray(device_ids).astype(str)
        devices: dict[str, float] = {}
        order = np.argsort(device_ids, kind="stable")
        names, starts = np.unique(device_ids[order], return_index=True)
        for name, rows in zip(names, np.split(order, starts[1:]), strict=True):
            own = raw[rows]
            own = own[np.isfinite(own)]
            if len(own) < MIN_DEVICE_POINTS:
                continue
            threshold = float(calibrator(np.array([pot_threshold(own, risk, init_quantile)]))[0])
            if threshold > CALIBRATED_THRESHOLD + MIN_RAISE:
                devices[str(name)] = threshold
        devices.update(overrides or {})
        return cls(CALIBRATED_THRESHOLD, devices)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionRule:
        return cls(float(data.get("default", CALIBRATED_THRESHOLD)),
                   {str(k): float(v) for k, v in (data.get("devices") or {}).items()})
