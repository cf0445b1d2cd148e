"""From forecast errors to calibrated scores, thresholds and attribution.

Chained after the network, each step a small object with ``to_dict``/``from_dict``:

1. **Error profile.** Per feature, the squared forecast error (in scaled units) is smoothed
   over ``smoothing_steps`` with an exponential moving average within each segment. An
   incident on real machines lasts minutes, a single noisy step does not; smoothing trades
   a few steps of delay for far fewer isolated false alarms. The raw score is the sum over
   features, so each feature's share of it is its attribution.
2. **Calibration** (:class:`Calibrator`): the raw score's validation median maps to 0 and
   the threshold to 0.5 via ``x / (1 + x)``. The map is monotonic (ranking and AUPRC are
   unchanged), bounded in 0..1 and never saturates the way a logistic would.
3. **Threshold** (:func:`pot_threshold`): peaks-over-threshold (Siffer et al., KDD 2017)
   on validation scores: a generalised Pareto tail fitted by the method of moments above
   the ``init_quantile``, read at the configured risk. Test labels never enter. It falls
   back to the empirical quantile when the tail is too short or degenerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_TAIL_POINTS = 10


def smoothed_errors(squared_errors: np.ndarray, segments: np.ndarray, steps: int) -> np.ndarray:
    """EWM (span ``steps``) of each column, restarted at every segment boundary."""
    if steps <= 1 or len(squared_errors) == 0:
        return squared_errors
    # pandas' grouped EWM runs in compiled code; segments are contiguous and increasing
    # (cumulative ids), so its group-ordered result is already in row order
    order_ok = len(segments) < 2 or bool(np.all(np.diff(segments) >= 0))
    frame = pd.DataFrame(squared_errors)
    if not order_ok:
        return frame.groupby(segments, sort=False).transform(
            lambda col: col.ewm(span=steps, adjust=True).mean()).to_numpy(np.float64)
    return frame.groupby(segments).ewm(span=steps, adjust=True).mean().to_numpy(np.float64)


def pot_threshold(scores: np.ndarray, risk: float, init_quantile: float) -> float:
    """Score exceeded with probability ``risk`` under a GPD tail fitted above ``init_quantile``."""
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        raise ValueError("no finite validation scores to choose a threshold from")
    u = float(np.quantile(scores, init_quantile))
    excess = scores[scores > u] - u
    fallback = float(np.quantile(scores, max(0.0, 1.0 - risk)))
    if len(excess) < MIN_TAIL_POINTS or excess.var() <= 0:
        return max(fallback, u)
    mean, var = excess.mean(), excess.var()
    shape = 0.5 * (1.0 - mean * mean / var)
    scale = 0.5 * mean * (mean * mean / var + 1.0)
    ratio = risk * len(scores) / len(excess)
    if ratio >= 1.0:
        return fallback
    z = u - scale * np.log(ratio) if abs(shape) < 1e-06 else u + scale / shape * (ratio ** (-shape) - 1.0)
    return float(z) if np.isfinite(z) and z > u else max(fallback, u)


@dataclass
class Calibrator:
    """Monotonic map of raw scores to 0..1 with ``threshold`` at 0.5."""

    baseline: float   # validation median raw score -> 0
    threshold: float  # raw threshold -> 0.5

    @classmethod
    def fit(cls, validation_scores: np.ndarray, *, risk: float, init_quantile: float) -> Calibrator:
        scores = np.asarray(validation_scores, np.float64)
        scores = scores[np.isfinite(scores)]
        if len(scores) == 0:
            raise ValueError("no finite validation scores to calibrate on")
        baseline = float(np.median(scores))
        threshold = pot_threshold(scores, risk, init_quantile)
        # a flat validation score (a perfect forecaster) still needs a usable scale
        threshold = max(threshold, baseline + max(1e-9, 1e-6 * abs(baseline)))
        return cls(baseline, threshold)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.maximum(np.asarray(raw, np.float64) - self.baseline, 0.0) / (self.threshold - self.baseline)
        return x / (1.0 + x)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        return cls(float(data["baseline"]), float(data["threshold"]))


def top_features(contributions: np.ndarray, names: list[str], k: int) -> list[list[str]]:
    """The ``k`` features with the largest contribution at each row, largest first."""
    if len(contributions) == 0:
        return []
    k = min(k, contributions.shape[1])
    idx = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    lookup = np.asarray(names, dtype=object)
    return lookup[idx].tolist()
