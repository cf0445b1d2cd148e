"""Feature engineering: the one function that training, the feature actors and serving call.

:func:`build_features` turns a telemetry frame (many devices at once, any configured metric
list) into a :class:`FeatureFrame`: one row per sample, ordered by device then time, with
a float feature matrix and the bookkeeping windows need. The rules:

* **Features.** Each configured metric as it comes (counters are already per-second rates),
  plus ``bytes_per_packet_in`` / ``bytes_per_packet_out`` when both halves are configured,
  plus, when ``rolling_s`` is set, the time-based rolling mean and standard deviation of
  every metric over the last ``rolling_s`` seconds (``<m>_mean_<s>s``, ``<m>_std_<s>s``).
* **Divide by zero.** Zero packets means no packet size: ``bytes_per_packet`` is 0 there,
  never inf or NaN.
* **Missing values.** A missing value takes the device's previous value within the same
  segment; a segment that starts missing takes the training median (0 once scaled), so a
  hole never becomes an invented spike.
* **Gaps.** A silence longer than ``gap_s`` ends a segment. Windows never span two
  segments, so the first ``window`` samples after a gap are not scored (see
  :func:`window_targets`).
* **Flags.** A sample labelled 1 is flagged; training drops every window that touches a
  flagged sample, so known incidents are not learned as normal.

The :class:`Scaler` is fitted on training rows only and saved with the model; serving
applies the saved one. :func:`feature_reference` records the training distribution of each
feature (the seed's mean/std/min/max/75th percentile plus PSI bin edges) for drift checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, parse_timestamps, to_ms

RATIO_FEATURES = {"bytes_per_packet_in": ("bytes_in", "packets_in"),
                  "bytes_per_packet_out": ("bytes_out", "packets_out")}
# A scale below this fraction of a feature's typical magnitude is treated as constant, so a
# metric that never moved in training cannot turn a tiny change into an infinite z-score.
RELATIVE_SCALE_FLOOR = 1e-2
ABSOLUTE_SCALE_FLOOR = 1e-6
# Scaled values are clipped here: beyond 50 standard deviations "how far" no longer matters,
# and unbounded inputs would saturate the LSTM's gates.
CLIP_Z = 50.0
PSI_BINS = 10


def feature_names(metrics: list[str], rolling_s: float | None = None) -> list[str]:
    names = list(metrics)
    names += [name for name, (num, den) in RATIO_FEATURES.items() if num in metrics and den in metrics]
    if rolling_s:
        tag = f"{rolling_s:g}s"
        names += [f"{m}_{stat}_{tag}" for m in metrics for stat in ("mean", "std")]
    return names


def metric_of(feature: str, metrics: list[str]) -> str:
    """The configured metric a feature is derived from (itself for a plain metric)."""
    if feature in metrics:
        return feature
    if feature in RATIO_FEATURES:
        return RATIO_FEATURES[feature][0]
    for m in sorted(metrics, key=len, reverse=True):
        if feature.startswith(m + "_"):
            return m
    return feature


@dataclass
class FeatureFrame:
    """Features of many devices, rows ordered by (device, time)."""

    values: np.ndarray          # (rows, features) float32, unscaled
    names: list[str]
    device_ids: np.ndarray      # (rows,) object
    timestamps_ms: np.ndarray   # (rows,) int64
    segments: np.ndarray        # (rows,) int64, a new id after every gap and every device
    flagged: np.ndarray         # (rows,) bool, labelled anomalous

    def __len__(self) -> int:
        return len(self.values)

    def select(self, rows: np.ndarray) -> FeatureFrame:
        return FeatureFrame(self.values[rows], self.names, self.device_ids[rows],
                            self.timestamps_ms[rows], self.segments[rows], self.flagged[rows])


def build_features(frame: pd.DataFrame, metrics: list[str], *, gap_s: float,
                   rolling_s: float | None = None) -> FeatureFrame:
    """Features for every row of ``frame`` (columns device_id, timestamp, metrics[, label])."""
    missing = [c for c in (DEVICE, TIMESTAMP, *metrics) if c not in frame.columns]
    if missing:
        raise TelemetryError(f"telemetry frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise TelemetryError("telemetry frame has no rows")
    stamps = parse_timestamps(frame[TIMESTAMP])  # numbers are epoch seconds, as everywhere
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise TelemetryError(f"column {TIMESTAMP!r} row {row} holds {frame[TIMESTAMP].iloc[row]!r}, "
                             "not a timestamp")
    all_ms = to_ms(stamps).to_numpy()
    order = np.lexsort((all_ms, frame[DEVICE].astype(str).to_numpy()))
    data = frame.iloc[order]
    devices = data[DEVICE].astype(str).to_numpy()
    ts_ms = all_ms[order]
    columns = data[metrics]
    try:
        if not all(pd.api.types.is_numeric_dtype(t) for t in columns.dtypes):
            columns = columns.apply(pd.to_numeric, errors="raise")  # text that holds numbers
        raw = columns.to_numpy(np.float64, copy=True)
    except (ValueError, TypeError) as exc:
        raise TelemetryError(f"metric columns must be numeric: {exc}") from exc
    raw[~np.isfinite(raw)] = np.nan

    new_device = np.r_[True, devices[1:] != devices[:-1]]
    gap = np.r_[False, np.diff(ts_ms) > gap_s * 1000.0]
    segments = np.cumsum(new_device | gap) - 1

    missing = np.isnan(raw).any()
    filled = pd.DataFrame(raw, columns=metrics).groupby(segments).ffill().to_numpy() if missing else raw
    columns = [filled]
    for _name, (num, den) in RATIO_FEATURES.items():
        if num in metrics and den in metrics:
            n, d = filled[:, metrics.index(num)], filled[:, metrics.index(den)]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(d > 0, n / np.where(d > 0, d, 1.0), 0.0)
            columns.append(np.where(np.isnan(n) | np.isnan(d), np.nan, ratio)[:, None])
    if rolling_s:
        columns.append(_rolling(filled, metrics, segments, ts_ms, rolling_s))
    values = np.hstack(columns).astype(np.float32)
    flagged = np.zeros(len(data), bool)
    if LABEL in data.columns:
        flagged = pd.to_numeric(data[LABEL], errors="coerce").fillna(0).to_numpy() > 0
    return FeatureFrame(values, feature_names(metrics, rolling_s), devices, ts_ms.astype(np.int64),
                        segments.astype(np.int64), flagged)


def _rolling(values: np.ndarray, metrics: list[str], segments: np.ndarray, ts_ms: np.ndarray,
             rolling_s: float) -> np.ndarray:
    """Time-based rolling mean and std per segment (std of one sample is 0)."""
    frame = pd.DataFrame(values, columns=metrics)
    frame["_seg"] = segments
    frame.index = pd.to_datetime(ts_ms, unit="ms")
    rolled = frame.groupby("_seg", sort=False)[metrics].rolling(f"{int(rolling_s * 1000)}ms")
    mean = rolled.mean().to_numpy()
    std = np.nan_to_num(rolled.std(ddof=0).to_numpy(), nan=0.0)
    out = np.empty((len(values), 2 * len(metrics)))
    out[:, 0::2], out[:, 1::2] = mean, std
    return out


@dataclass
class Scaler:
    """Per-feature centring and scaling, fitted on training rows only."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        if len(values) == 0:
            raise TelemetryError("cannot fit a scaler on zero rows")
        center = np.nanmedian(values, axis=0)
        center = np.where(np.isnan(center), 0.0, center)
        std = np.nanstd(values, axis=0)
        magnitude = np.nanmax(np.abs(values), axis=0)
        floor = np.maximum(RELATIVE_SCALE_FLOOR * np.nan_to_num(magnitude), ABSOLUTE_SCALE_FLOOR)
        return cls(center.astype(np.float64), np.maximum(np.nan_to_num(std), floor).astype(np.float64))

    def transform(self, values: np.ndarray) -> np.ndarray:
        z = (values - self.center) / self.scale
        # still-missing values (a segment that starts empty) become the training median
        return np.clip(np.nan_to_num(z, nan=0.0), -CLIP_Z, CLIP_Z).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        return cls(np.asarray(data["center"], np.float64), np.asarray(data["scale"], np.float64))


def split_segments(segments: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Segment ids with a new segment also starting at every ``boundary`` row."""
    if len(segments) == 0:
        return np.asarray(segments, np.int64)
    return np.cumsum(np.r_[True, np.diff(segments) != 0] | boundary) - 1


def ranked(row_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows grouped contiguously (a device's rows together): the groups present, each
    row's slot among them and its rank within its group. Rows ``rank == j`` are the j-th row
    of every group: per-device state is stepped for all devices at once, one rank at a time."""
    groups, first = np.unique(row_group, return_index=True)
    slot = np.searchsorted(groups, row_group)
    return groups, slot, np.arange(len(row_group)) - first[slot]


def window_targets(segments: np.ndarray, window: int, flagged: np.ndarray | None = None) -> np.ndarray:
    """Rows ``t`` whose previous ``window`` rows lie in t's segment (forecast targets).

    With ``flagged``, rows whose window or target touches a flagged row are left out.
    """
    n = len(segments)
    if n <= window:
        return np.empty(0, np.int64)
    t = np.arange(window, n)
    ok = segments[t - window] == segments[t]
    if flagged is not None and flagged.any():
        ok &= flags_in_last(flagged, window + 1)[window:] == 0
    return t[ok]


def flags_in_last(flagged: np.ndarray, span: int) -> np.ndarray:
    """For each row, how many of it and the ``span - 1`` rows before it are flagged."""
    return np.convolve(flagged.astype(np.int64), np.ones(span, np.int64))[:len(flagged)]


def held_out_tail(devices: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the last ``fraction`` of each device's rows (rows ordered by device, time)."""
    _, first, counts = np.unique(devices, return_index=True, return_counts=True)
    mask = np.zeros(len(devices), bool)
    for start, count in zip(first, counts, strict=True):
        held = round(count * fraction)
        mask[start + count - held:start + count] = True
    return mask


def windows_at(values: np.ndarray, targets: np.ndarray, window: int) -> np.ndarray:
    """Inputs for each target row: ``values[t - window : t]``, shape (len(targets), window, F)."""
    view = sliding_window_view(values, window, axis=0)  # (n - window + 1, F, window)
    return np.ascontiguousarray(view[targets - window].transpose(0, 2, 1))


def feature_reference(values: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Training distribution per feature: summary statistics and PSI bins (quantile edges)."""
    ref: dict[str, Any] = {}
    for i, name in enumerate(names):
        col = values[:, i][np.isfinite(values[:, i])].astype(np.float64)
        if len(col) == 0:
            continue
        edges = np.unique(np.quantile(col, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        ref[name] = {"mean": float(col.mean()), "std": float(col.std()), "min": float(col.min()),
                     "max": float(col.max()), "p75": float(np.quantile(col, 0.75)),
                     "bin_edges": edges.tolist(), "bin_fractions": (counts / len(col)).tolist()}
    return ref
