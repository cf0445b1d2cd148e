"""The decision rule: the last link of the chain, after the calibrator (Merlion's post-rule).

The calibrator puts every kind's score on one 0..1 scale with the label-free threshold at
0.5; the rule says where each device's alarm starts. Per-device thresholds live here and
nowhere else, so offline detection, the feature pool and Serve decide alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The calibrated score of the fitted threshold (see eyenet.detection.scoring.Calibrator).
CALIBRATED_THRESHOLD = 0.5


@dataclass
class DecisionRule:
    default: float = CALIBRATED_THRESHOLD
    devices: dict[str, float] = field(default_factory=dict)

    def thresholds(self, device_ids: np.ndarray) -> np.ndarray:
        """Each row's threshold on the calibrated score."""
        if not self.devices:
            return np.full(len(device_ids), self.default)
        return np.array([self.devices.get(str(d), self.default) for d in device_ids], np.float64)

    def decide(self, score: np.ndarray, scored: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """Alarm where a scored row's calibrated score is above its device's threshold."""
        return np.asarray(scored, bool) & (np.asarray(score) > thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "devices": dict(self.devices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionRule:
        return cls(float(data.get("default", CALIBRATED_THRESHOLD)),
                   {str(k): float(v) for k, v in (data.get("devices") or {}).items()})
