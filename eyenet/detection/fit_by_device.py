"""Fitting what :meth:`Detector.prepare` fits, one device's history at a time.

``prepare`` fits the per-device scaler, the regime tracker's training noise, the drift
reference and the sample spacing on one frame holding the whole fleet's history. A fleet
history read from the store does not fit in the driver's memory, so :class:`DeviceFit`
takes one device's frame at a time and keeps only what merges:

* each device's own :class:`Scaler` is fitted on that device's rows alone, as ``prepare``
  does, so it is exactly the same;
* the fleet scaler (median, standard deviation, largest magnitude) and the drift reference
  (quantile bins, mean, std, min, max): moments, minima and maxima merge exactly; medians
  and quantiles do not, so they come from a uniform reservoir of at most
  ``sample_rows`` training rows of the fleet. Until the fleet has more rows than that, the
  reservoir holds every row and both are exactly what ``prepare`` fits;
* the regime noise (mean absolute scaled value) is a sum and a count; devices judged in
  the fleet's scale are read a second time once the fleet scaler is known;
* the sample spacing is a median of integer milliseconds, kept as counts per value, so it
  is exact however long the history.

:func:`calibrate_by_device` does :meth:`Detector.finish`'s calibration (network kinds)
from each device's held-out tail, keeping at most ``rows_per_device`` scores per device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eyenet.detection.decision import DecisionRule
from eyenet.detection.detector import Detector
from eyenet.detection.device_scaling import MIN_DEVICE_ROWS, DeviceScaler, log_prepared
from eyenet.detection.error_models import lstm_from_weights
from eyenet.detection.features import (
    ABSOLUTE_SCALE_FLOOR,
    RELATIVE_SCALE_FLOOR,
    FeatureFrame,
    Scaler,
    feature_reference,
    held_out_tail,
    split_segments,
    window_targets,
)
from eyenet.detection.regime import MIN_DEVIATION
from eyenet.detection.scoring import Calibrator
from eyenet.detection.training import FitResult
from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, ms_of, to_ms

# Rows of the fleet kept for its median and quantiles: 100k rows x 40 features of float32
# is 16 MB, whatever the fleet's size, and a quantile of 100k rows is within ~0.3% of rank.
FLEET_SAMPLE_ROWS = 100_000
# Validation scores kept per device for the threshold: the driver holds one float per kept
# row of every device (8 bytes x rows x devices), and a device with a long tail must not
# outweigh the others in a fleet-wide quantile.
CALIBRATION_ROWS_PER_DEVICE = 5_000
# Devices whose held-out errors give the error prior (a median per feature): a median of
# 50 devices' few thousand rows each is settled, and their errors are what the driver holds
# until it is known. With as many devices or fewer it is exactly what finish() fits.
PRIOR_DEVICES = 50


def incident_spans(events: Iterable[Any], tolerance_s: float) -> dict[str, list[tuple[int, int]]]:
    """Each device's stored anomaly events as (start_ms, end_ms) spans, widened by
    ``tolerance_s`` on both sides (the event's own sample). Events without a device are
    fleet-wide and flag nothing."""
    spans: dict[str, list[tuple[int, int]]] = {}
    pad_ms = tolerance_s * 1000
    for event in events:
        if event.device_id is None:
            continue
        # live anomaly events cover an episode (payload start_ms..end_ms); others a moment
        start = int(event.payload.get("start_ms", ms_of(event.ts)))
        end = int(event.payload.get("end_ms", start))
        # whole milliseconds inside the widened span (timestamps are whole ms)
        spans.setdefault(str(event.device_id), []).append((math.ceil(start - pad_ms),
                                                           math.floor(end + pad_ms)))
    return spans


def flag_spans(frame: pd.DataFrame, spans: Mapping[str, list[tuple[int, int]]]) -> pd.DataFrame:
    """``frame`` with samples inside their device's ``spans`` (:func:`incident_spans`)
    labelled 1, so training leaves their windows out, and a missing label read as 0."""
    frame = frame.copy()
    label = pd.to_numeric(frame[LABEL], errors="coerce").fillna(0).to_numpy() if LABEL in frame \
        else np.zeros(len(frame))
    if spans and len(frame):
        ts_ms = to_ms(pd.to_datetime(frame[TIMESTAMP], utc=True)).to_numpy()
        devices = frame[DEVICE].astype(str).to_numpy()
        for device in set(devices) & set(spans):
            mine = devices == device
            for start, end in spans[device]:
                label[mine & (ts_ms >= start) & (ts_ms <= end)] = 1
    frame[LABEL] = label.astype(np.int64)
    return frame


@dataclass
class DeviceSplit:
    """One device's training history [first_ms, cut_ms) and held-out tail [cut_ms, end_ms)."""

    device_id: str
    first_ms: int
    cut_ms: int
    end_ms: int
    train_windows: int
    val_windows: int


class _Reservoir:
    """A uniform sample of at most ``cap`` rows (Algorithm R, seeded)."""

    def __init__(self, cap: int, seed: int) -> None:
        self.cap, self.seen, self.overflowed = cap, 0, False
        self._rng = np.random.default_rng(seed)
        self._parts: list[np.ndarray] = []
        self._rows: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        free = max(0, min(self.cap - self.seen, len(rows)))
        if free:
            self._parts.append(np.array(rows[:free]))
        rest = rows[free:]
        self.seen += free
        if len(rest):
            if self._rows is None:
                self._rows = np.concatenate(self._parts)
                self._parts = []
            # row i of the rest replaces a random slot with probability cap / (rows seen)
            slot = self._rng.integers(0, self.seen + np.arange(1, len(rest) + 1))
            keep = slot < self.cap
            self._rows[slot[keep]] = rest[keep]
            self.seen += len(rest)
            self.overflowed = True

    def rows(self, n_features: int) -> np.ndarray:
        if self._rows is not None:
            return self._rows
        return np.concatenate(self._parts) if self._parts else np.empty((0, n_features), np.float32)


@dataclass
class _Moments:
    """NaN-aware count, mean, sum of squared deviations, min and max per feature,
    merged batch by batch (Chan et al.)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Moments:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.full(n, np.inf), np.full(n, -np.inf))

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        ok = np.isfinite(x)
        n = ok.sum(axis=0).astype(np.float64)
        seen = n > 0
        z = np.where(ok, x, 0.0)
        mean = np.divide(z.sum(axis=0), n, out=np.zeros_like(n), where=seen)
        m2 = np.where(ok, (z - mean) ** 2, 0.0).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = np.where(seen, self.mean + delta * np.divide(n, total, out=np.zeros_like(n),
                                                                 where=total > 0), self.mean)
        self.m2 = self.m2 + m2 + np.divide(delta**2 * self.count * n, total, out=np.zeros_like(n),
                                           where=total > 0)
        self.count = total
        self.low = np.minimum(self.low, np.where(ok, z, np.inf).min(axis=0, initial=np.inf))
        self.high = np.maximum(self.high, np.where(ok, z, -np.inf).max(axis=0, initial=-np.inf))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0))


@dataclass
class DeviceFit:
    """Accumulates :meth:`Detector.prepare`'s fit over devices given one at a time, in
    device-id order (the order ``prepare`` sorts rows in); :meth:`finish` sets the fitted
    parts on the detector."""

    detector: Detector
    sample_rows: int = FLEET_SAMPLE_ROWS
    splits: list[DeviceSplit] = field(default_factory=list)
    flagged_rows: int = 0
    rows: int = 0
    labelled_train_windows: int = 0

    def __post_init__(self) -> None:
        self._devices: dict[str, Scaler] = {}
        self._short: list[str] = []
        self._sample = _Reservoir(self.sample_rows, self.detector.config.seed)
        self._logged: _Moments | None = None
        self._plain: _Moments | None = None
        self._abs_sum: np.ndarray | None = None
        self._abs_rows = 0
        self._spacing_ms: dict[int, int] = {}
        self._last_device: str | None = None

    def add(self, device_id: str, frame: pd.DataFrame) -> DeviceSplit | None:
        """Fold in one device's history (labelled: flagged samples have label 1); returns
        its train/held-out split, or None when it has no rows."""
        if frame.empty:
            return None
        if self._last_device is not None and str(device_id) <= self._last_device:
            raise TelemetryError(f"devices must come in increasing id order: {device_id!r} after "
                                 f"{self._last_device!r}")
        self._last_device = str(device_id)
        det, cfg = self.detector, self.detector.config
        feats = det.features(frame)
        if set(feats.device_ids) != {str(device_id)}:
            raise TelemetryError(f"the frame read for device {device_id!r} holds devices "
                                 f"{sorted(set(feats.device_ids))}")
        if not det.feature_names:
            det.feature_names = feats.names
        n_feat = len(feats.names)
        if self._logged is None:
            self._logged, self._plain = _Moments.empty(n_feat), _Moments.empty(n_feat)
            self._abs_sum = np.zeros(n_feat)
        self.rows += len(feats)
        self.flagged_rows += int(feats.flagged.sum())
        fit = ~feats.flagged
        log_features = self.log_features(feats.names)
        if fit.any():
            values = feats.values[fit]
            x = log_prepared(values, log_features)
            ts = feats.timestamps_ms[fit]
            span_s = float(ts.max() - ts.min()) / 1000.0
            # the rule of DeviceScaler.fit: own statistics only for a long enough history
            if len(x) >= MIN_DEVICE_ROWS and span_s >= cfg.learn_s:
                own = self._devices[str(device_id)] = Scaler.fit(x)
                self._add_deviation(own.transform(x))
            else:
                self._short.append(str(device_id))
            self._sample.add(values)
            self._logged.add(x)
            self._plain.add(values)
        same = np.diff(feats.segments) == 0
        for gap_ms, n in zip(*np.unique(np.diff(feats.timestamps_ms)[same], return_counts=True), strict=True):
            self._spacing_ms[int(gap_ms)] = self._spacing_ms.get(int(gap_ms), 0) + int(n)
        return self._split(str(device_id), feats)

    def _split(self, device_id: str, feats: FeatureFrame) -> DeviceSplit:
        cfg = self.detector.config
        val_rows = held_out_tail(feats.device_ids, cfg.validation_fraction)
        segments = split_segments(feats.segments, np.r_[False, val_rows[1:] != val_rows[:-1]])
        targets = window_targets(segments, cfg.window_steps, feats.flagged if cfg.objective == "forecast"
                                 else None)
        train_t = targets[~val_rows[targets]]
        self.labelled_train_windows += int(feats.flagged[train_t].sum())
        ts = feats.timestamps_ms
        cut_ms = int(ts[val_rows][0]) if val_rows.any() else int(ts[-1]) + 1
        split = DeviceSplit(device_id, int(ts[0]), cut_ms, int(ts[-1]) + 1, len(train_t),
                            int(len(targets) - len(train_t)))
        self.splits.append(split)
        return split

    def _add_deviation(self, scaled: np.ndarray) -> None:
        self._abs_sum += np.abs(np.asarray(scaled, np.float64)).sum(axis=0)
        self._abs_rows += len(scaled)

    def log_features(self, names: list[str]) -> np.ndarray:
        logged = set(self.detector.config.log_metrics or []) & set(self.detector.metrics)
        return np.array([n in logged for n in names], bool)

    @property
    def fleet_scaled(self) -> list[str]:
        """Devices judged in the fleet's scale (too short a history for their own)."""
        return list(self._short)

    def finish(self, read_device: Callable[[str], pd.DataFrame]) -> list[DeviceSplit]:
        """Set the detector's scaler, regime noise, drift reference and spacing; reads the
        fleet-scaled devices again with ``read_device`` (their scale was not known before).
        Raises as ``prepare`` does when the history cannot train."""
        det, cfg = self.detector, self.detector.config
        if self._logged is None or self._sample.seen == 0:
            raise TelemetryError("no unflagged training rows left to fit the scaler on")
        names = det.feature_names
        log_features = self.log_features(names)
        sample = self._sample.rows(len(names))
        fleet = Scaler.fit(log_prepared(sample, log_features))
        reference = feature_reference(sample, names)
        if self._sample.overflowed:  # the sample gives the median and quantiles; the rest is exact
            magnitude = np.maximum(np.abs(self._logged.low), np.abs(self._logged.high))
            floor = np.maximum(RELATIVE_SCALE_FLOOR * np.nan_to_num(magnitude, posinf=0.0),
                               ABSOLUTE_SCALE_FLOOR)
            fleet = Scaler(fleet.center, np.maximum(self._logged.std, floor))
            plain = self._plain
            for i, name in enumerate(names):
                if name in reference:
                    reference[name].update(mean=float(plain.mean[i]), std=float(plain.std[i]),
                                           min=float(plain.low[i]), max=float(plain.high[i]))
        det.scaling = DeviceScaler(fleet, dict(self._devices), log_features, list(self._short))
        for device_id in self._short:
            feats = det.features(read_device(device_id))
            fit = ~feats.flagged
            self._add_deviation(fleet.transform(log_prepared(feats.values[fit], log_features)))
        det.regime_reference = np.maximum(self._abs_sum / max(self._abs_rows, 1), MIN_DEVIATION)
        det.sample_interval_s = _median_of_counts(self._spacing_ms) / 1000.0 if self._spacing_ms \
            else det.gap_s
        det.reference = reference
        spans_s = [(s.end_ms - s.first_ms) / 1000.0 for s in self.splits]
        det.config = cfg = cfg.for_history(float(np.median(spans_s)) if spans_s else 0.0)
        train_w = sum(s.train_windows for s in self.splits)
        val_w = sum(s.val_windows for s in self.splits)
        if train_w == 0 or val_w == 0:
            raise TelemetryError(
                f"not enough history: {self.rows} rows of {len(self.splits)} device(s) give {train_w} "
                f"training and {val_w} validation windows of {cfg.window_steps} steps "
                f"(validation_fraction={cfg.validation_fraction}); need at least one of each")
        if cfg.objective == "classify" and self.labelled_train_windows == 0:
            raise TelemetryError("objective 'classify' needs labelled anomalies (label=1) in training")
        return self.splits


def _median_of_counts(counts: dict[int, int]) -> float:
    """``np.median`` of the multiset ``value -> count``."""
    values = np.array(sorted(counts), np.int64)
    cum = np.cumsum([counts[v] for v in values])
    n = int(cum[-1])
    lo = values[np.searchsorted(cum, (n - 1) // 2, side="right")]
    hi = values[np.searchsorted(cum, n // 2, side="right")]
    return (float(lo) + float(hi)) / 2.0


def calibrate_by_device(detector: Detector, result: FitResult, splits: list[DeviceSplit],
                        read_device: Callable[[str], pd.DataFrame], flagged_rows: int,
                        rows_per_device: int = CALIBRATION_ROWS_PER_DEVICE) -> Detector:
    """:meth:`Detector.finish` for the LSTM, device by device: each device's held-out tail
    (rows from ``cut_ms``, features built on its whole history as ``prepare`` builds them)
    is scored, and the first ``rows_per_device`` of it feed the error prior (from the first
    ``PRIOR_DEVICES`` devices), the threshold and the decision rule."""
    cfg = detector.config
    if cfg.kind != "lstm":
        raise TelemetryError(f"calibration device by device scores the LSTM alone; kind {cfg.kind!r} "
                             "fits on the history frame")
    detector.model = lstm_from_weights(cfg, len(detector.feature_names), result.state_dict)
    detector.error_prior = None
    held = [s for s in splits if s.val_windows]

    def held_out(split: DeviceSplit) -> tuple[Any, np.ndarray, np.ndarray]:
        feats = detector.features(read_device(split.device_id))
        val = feats.select(np.flatnonzero(feats.timestamps_ms >= split.cut_ms)[:rows_per_device])
        return val, *detector.held_out_normal(val)

    kept: list[np.ndarray] = []
    devices: list[np.ndarray] = []

    def keep(raw: np.ndarray, val: Any, normal: np.ndarray) -> None:
        if normal.any():
            kept.append(raw[normal])
            devices.append(val.device_ids[normal])

    rest = held
    if detector.smoothed:
        # the first devices' unsmoothed errors give the prior, then their scores: one pass each
        first = [(val, normal, detector.raw_scores(val, scaled, val.segments, smooth=False)[1])
                 for val, scaled, normal in map(held_out, held[:PRIOR_DEVICES])]
        if first:
            detector.error_prior = np.nanmedian(np.concatenate(
                [detector.profile(errors, val.segments, None)[1][normal] for val, normal, errors in first]),
                axis=0)
        for val, normal, errors in first:
            keep(detector.profile(errors, val.segments, detector.error_prior)[0], val, normal)
        rest = held[PRIOR_DEVICES:]
    for val, scaled, normal in map(held_out, rest):
        keep(detector.raw_scores(val, scaled, val.segments)[0], val, normal)
    if not kept:
        raise TelemetryError("every held-out window touches a labelled incident; nothing "
                             "normal is left to calibrate the threshold on")
    risk = cfg.point_risk(detector.sample_interval_s)
    if detector.model.outputs_probability:
        detector.calibrator = Calibrator(0.0, 1.0)
        detector.rule = DecisionRule(devices=dict(cfg.device_thresholds))
    else:
        raw, ids = np.concatenate(kept), np.concatenate(devices)
        tail = {"risk": risk, "init_quantile": cfg.threshold_init_quantile}
        detector.calibrator = Calibrator.fit(raw, **tail)
        detector.rule = DecisionRule.fit(raw, ids, detector.calibrator, **tail,
                                         overrides=cfg.device_thresholds)
    detector.training = {"kind": cfg.kind, "train_windows": sum(s.train_windows for s in splits),
                         "val_windows": sum(s.val_windows for s in splits),
                         "excluded_flagged_rows": int(flagged_rows),
                         "threshold_risk": risk,
                         "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                         "epochs": len(result.history), "train_seconds": result.train_seconds}
    return detector
