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
from scipy.signal import lfilter

MIN_TAIL_POINTS = 10


def prior_weights(steps: int, rows: int) -> np.ndarray:
    """The weight of the ``prior`` of :func:`smoothed_errors` at each of a segment's first
    ``rows`` rows: a full history's, ``1 / (1 - w)``, decayed once per row."""
    decay = 1.0 - 2.0 / (steps + 1.0)
    return decay ** np.arange(1, rows + 1) / (1.0 - decay)


def smoothed_errors(squared_errors: np.ndarray, segments: np.ndarray, steps: int,
                    prior: np.ndarray | None = None) -> np.ndarray:
    """EWM (span ``steps``) of each column, restarted at every segment boundary.

    The same numbers as pandas' ``ewm(span=steps, adjust=True).mean()`` per segment (and as
    :class:`eyenet.streaming.scorer.StreamScorer`'s running sums): ``num = w * num + x`` and
    ``den = w * den + 1`` with ``w = 1 - 2 / (steps + 1)``; a missing value decays both sums
    without adding to them (``ignore_na=False``), and rows before a segment's first value
    stay missing. Written as two linear filters per segment because pandas' grouped EWM
    costs about 0.1 ms per group, which dominated scoring many short windows; segments
    of one length are filtered as one block.

    ``prior`` (one value per column: the typical normal error) starts every segment as if it
    had a long normal history behind it: its weight is a full history's and decays like
    any value's. Without it a segment's first points are the mean of one, two, three raw
    errors, far noisier than the smoothed profile the threshold was fitted on: a pipeline
    started on an empty store flagged quiet devices at its first scored points. An incident
    still shows at once: its errors are many times the prior.
    """
    if steps <= 1 or len(squared_errors) == 0:
        return squared_errors
    decay = 1.0 - 2.0 / (steps + 1.0)
    errors = np.asarray(squared_errors, np.float64)
    segments = np.asarray(segments)
    order = None
    if len(segments) > 1 and not bool(np.all(np.diff(segments) >= 0)):
        order = np.argsort(segments, kind="stable")  # each segment's rows, in row order
        errors, segments = errors[order], segments[order]
    present = np.isfinite(errors)
    values = np.where(present, errors, 0.0)
    out = np.empty_like(values)
    starts = np.r_[0, np.flatnonzero(np.diff(segments) != 0) + 1]
    lengths = np.diff(np.r_[starts, len(segments)])
    # segments of one length filter together as a (segments, length, features) block
    for length in np.unique(lengths):
        rows = starts[lengths == length][:, None] + np.arange(length)
        num = lfilter([1.0], [1.0, -decay], values[rows], axis=1)
        den = lfilter([1.0], [1.0, -decay], present[rows].astype(np.float64), axis=1)
        seen = den > 0
        if prior is not None:
            weight = prior_weights(steps, int(length))[None, :, None]
            num, den = num + weight * np.asarray(prior, np.float64), den + weight
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(seen, num / np.where(seen, den, 1.0), np.nan)
    if order is not None:
        restored = np.empty_like(out)
        restored[order] = out
        return restored
    return out


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
