"""Scoring protocol (shared/datasets/README.md) and the baselines measured beside EyeNet.

Per series: point-wise precision/recall/F1 of the detector's own decision (no point
adjustment), AUPRC of the raw score, event recall (labelled segments with at least one
flagged row), and, labelled as such, the oracle best-threshold F1 and point-adjusted F1.

Baselines get the same features, the same scaler and the same label-free threshold rule
(peaks-over-threshold on the held-out tail of training) as the detector, so the only
difference measured is the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, precision_recall_curve

from eyenet.config import DetectorConfig
from eyenet.features import FeatureFrame, Scaler, held_out_tail
from eyenet.scoring import pot_threshold

PCA_VARIANCE = 0.9


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
        out["auprc"] = float(average_precision_score(labels, raw))
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


class Baseline:
    """IsolationForest or PCA reconstruction error on the detector's scaled features."""

    def __init__(self, kind: str, config: DetectorConfig) -> None:
        if kind not in ("isolation_forest", "pca"):
            raise ValueError(f"unknown baseline {kind!r}")
        self.kind, self.config = kind, config

    def fit(self, train: FeatureFrame) -> Baseline:
        usable = train.select(np.flatnonzero(~train.flagged))
        held = held_out_tail(usable.device_ids, self.config.validation_fraction)
        self.scaler = Scaler.fit(usable.values)  # the same rule as the detector's scaler
        x = self.scaler.transform(usable.values)
        if self.kind == "pca":
            self.model = PCA(n_components=PCA_VARIANCE if x.shape[1] > 1 else 1,
                             random_state=self.config.seed).fit(x[~held])
        else:
            self.model = IsolationForest(random_state=self.config.seed).fit(x[~held])
        self.threshold = pot_threshold(self._raw(x[held]), self.config.threshold_risk,
                                       self.config.threshold_init_quantile)
        return self

    def _raw(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "pca":
            return ((self.model.inverse_transform(self.model.transform(x)) - x) ** 2).sum(axis=1)
        return -self.model.score_samples(x)

    def score(self, test: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        raw = self._raw(self.scaler.transform(test.values))
        return raw, raw > self.threshold


def mean_table(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, float | int)})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
