"""Scoring protocol (shared/datasets/README.md) and the models measured in one run.

Per series: point-wise precision/recall/F1 of the detector's own decision (no point
adjustment), AUPRC of the raw score, event recall (labelled segments with at least one
flagged row), VUS-PR of the raw score (TSB-AD's headline measure), and, labelled as such,
the oracle best-threshold F1 and point-adjusted F1.

Baselines are detectors too (:data:`EVALUATED_MODELS`): the same features, scaler and
label-free threshold rule (peaks-over-threshold on the held-out tail of training) as every
kind, so the only difference measured is the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Every detector kind, then the two baselines: bare (row-wise, no smoothing) IsolationForest
# and PCA, through the same Detector, scaler and threshold rule, so the model is all that
# differs. Each name maps to the detector settings it overrides.
EVALUATED_MODELS: dict[str, dict[str, Any]] = {
    "lstm": {"kind": "lstm"},
    "pca": {"kind": "pca"},
    "kmeans": {"kind": "kmeans"},
    "ensemble": {"kind": "ensemble"},
    "baseline_isolation_forest": {"kind": "isolation_forest", "subsequence_steps": 1, "smoothing_steps": 1},
    "baseline_pca": {"kind": "pca", "subsequence_steps": 1, "smoothing_steps": 1},
}
VUS_MAX_BUFFER = 100  # TSB-AD get_metrics(slidingWindow=100): buffers of 0..100 rows
VUS_THRESHOLDS = 250  # TSB-AD generate_curve(thre=250)


def label_segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) row ranges of consecutive 1s."""
    padded = np.r_[0, np.asarray(labels, np.int64), 0]
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _prf(labels: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(pred & labels))
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(labels.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def point_adjust(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """A whole labelled segment counts as found when any of its rows is flagged."""
    adjusted = pred.copy()
    for start, end in label_segments(labels):
        if pred[start:end].any():
            adjusted[start:end] = True
    return adjusted


def _buffered_ranges(starts: np.ndarray, ends: np.ndarray, half: int,
                     n: int) -> tuple[np.ndarray, np.ndarray]:
    """TSB-AD's new_sequence: inclusive [start, end] ranges widened by `half` rows on each
    side, merged where two widened ranges share a row, clipped to the series."""
    split = starts[1:] - ends[:-1] > 2 * half
    lo = np.r_[starts[0], starts[1:][split]] - half
    hi = np.r_[ends[:-1][split], ends[-1]] + half
    return np.maximum(lo, 0), np.minimum(hi, n - 1)


def vus_pr(labels: np.ndarray, score: np.ndarray, max_buffer: int = VUS_MAX_BUFFER,
           n_thresholds: int = VUS_THRESHOLDS) -> float:
    """Volume under the range-based precision-recall surface (Paparrizos et al., VLDB 2022),
    computed as TSB-AD does it (Liu & Paparrizos, NeurIPS 2024): TheDatumOrg/TSB-AD,
    TSB_AD/evaluation/basic_metrics.py, basic_metricor.RangeAUC_volume_opt, reached through
    generate_curve(version="opt", thre=250) from get_metrics(slidingWindow=100).

    Point-wise AUPRC punishes a detector that fires a few rows before or after a labelled
    range as hard as one that fires nowhere near it. VUS-PR softens the labels instead: for
    each buffer length `window` in 0..max_buffer, window // 2 rows on each side of every
    labelled range get the label sqrt(1 - distance / window) (ramps add, capped at 1). At
    each of `n_thresholds` thresholds (the scores at evenly spaced ranks, flagging score >=
    threshold) over the flagged rows:

      TP        = sum of the soft labels of flagged rows
      precision = TP / flagged rows
      recall    = min(TP / ((P + N_labels) / 2), 1), P = labelled rows, N_labels = P + the
                  soft labels of flagged buffer rows (TSB-AD's "neither large nor small" P)
      TPR       = recall * existence, existence = share of the buffered (merged) ranges with
                  at least one flagged row

    The range-PR AUC for one window is sum_k (TPR_k - TPR_{k-1}) * precision_k with TPR_-1 = 0;
    VUS-PR is its mean over the max_buffer + 1 windows. TSB-AD's benchmark scripts pass the
    series' period (find_length_rank) as the window; 100 is the function's default. Here every
    threshold's counts come from one cumulative sum over the rank at which each row is first
    flagged, so a window costs O(n) rather than O(n * thresholds).
    """
    labels = np.asarray(labels).astype(bool)
    score = np.asarray(score, np.float64)
    if labels.ndim != 1 or labels.shape != score.shape:
        raise ValueError("labels and score must be 1-d arrays of the same length")
    if not labels.any():
        raise ValueError("VUS-PR needs at least one labelled anomaly")
    if not np.isfinite(score).all():
        raise ValueError("VUS-PR needs finite scores")
    n = len(score)
    segments = np.array(label_segments(labels))
    starts, ends = segments[:, 0], segments[:, 1] - 1
    positives = float(labels.sum())
    thresholds = np.sort(score)[::-1][np.linspace(0, n - 1, n_thresholds).astype(int)]
    first_flagged = np.searchsorted(-thresholds, -score, side="left")  # row flagged from k on

    def per_threshold(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.cumsum(np.bincount(rows, weights, minlength=n_thresholds))

    flagged = per_threshold(first_flagged)
    labelled_flagged = per_threshold(first_flagged[labels])
    first_with_sentinel = np.r_[first_flagged, n_thresholds]
    areas = []
    for window in range(max_buffer + 1):
        half = window // 2
        soft = labels.astype(np.float64)
        if half:
            distance = np.arange(1, half + 1)
            rows = np.r_[(ends[:, None] + distance).ravel(), (starts[:, None] - distance).ravel()]
            ramp = np.tile(np.sqrt(1 - distance / window), 2 * len(starts))
            inside = (rows >= 0) & (rows < n)
            soft = np.minimum(soft + np.bincount(rows[inside], ramp[inside], minlength=n), 1.0)
        tp = per_threshold(first_flagged, soft)
        lo, hi = _buffered_ranges(starts, ends, half, n)
        first_hit = np.minimum.reduceat(first_with_sentinel, np.c_[lo, hi + 1].ravel())[::2]
        existence = per_threshold(first_hit) / len(lo)
        n_labels = positives + tp - labelled_flagged
        tpr = np.minimum(tp / ((positives + n_labels) / 2), 1.0) * existence
        areas.append(float(np.sum(np.diff(tpr, prepend=0.0) * tp / flagged)))
    return float(np.mean(areas))


def score_series(labels: np.ndarray, raw_score: np.ndarray, decision: np.ndarray) -> dict[str, Any]:
    labels = np.asarray(labels).astype(bool)
    decision = np.asarray(decision).astype(bool)
    raw = np.nan_to_num(np.asarray(raw_score, np.float64), nan=np.nanmin(raw_score)
                        if np.isfinite(raw_score).any() else 0.0)
    precision, recall, f1 = _prf(labels, decision)
    segments = label_segments(labels)
    out: dict[str, Any] = {"precision": precision, "recall": recall, "f1": f1,
                           "alarm_rate": float(decision.mean()), "events": len(segments)}
    if labels.any():
        # imported here: sklearn takes seconds to import, and the CLI reads EVALUATED_MODELS
        from sklearn.metrics import average_precision_score, precision_recall_curve

        out["auprc"] = float(average_precision_score(labels, raw))
        out["vus_pr"] = vus_pr(labels, raw)
        p, r, _ = precision_recall_curve(labels, raw)
        out["oracle_best_f1"] = float(np.max(2 * p * r / np.maximum(p + r, 1e-12)))
        out["event_recall"] = float(np.mean([decision[s:e].any() for s, e in segments]))
        out["point_adjusted_f1"] = _prf(labels, point_adjust(labels, decision))[2]
    return out


def attribution_hit_rate(decision: np.ndarray, top_feature: np.ndarray,
                         segments: list[tuple[int, int, set[str]]]) -> float | None:
    """Share of flagged rows inside labelled segments whose top feature is one of the
    metrics the operators blamed for that segment (SMD's segments.csv)."""
    hits, flagged = 0, 0
    for start, end, blamed in segments:
        rows = np.flatnonzero(decision[start:end]) + start
        flagged += len(rows)
        hits += sum(top_feature[r] in blamed for r in rows)
    return hits / flagged if flagged else None


def mean_table(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, float | int)})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
