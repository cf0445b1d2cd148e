"""Per-device scaling and cold start: each device is judged in its own units.

A fleet is not one distribution: a core router moves a thousand times the bytes of an
access switch. Scaled by fleet-wide statistics, a quiet device looks dead and a busy one
looks like a flood, and a model trained on 40 devices flagged most of the other devices'
normal points. So every feature is scaled per device (the rule of
:class:`eyenet.detection.features.Scaler`: centre on the median, divide by the standard deviation
with floors), fitted on that device's own training history and saved with the model.
Heavy-tailed rates (``log_metrics``: bytes and packets per second by default) are scaled
after ``log1p``, where a burst is a multiple rather than an absurd number of deviations.

A device the model never saw has no statistics. Its first ``learn_s`` seconds are its
*learning* period: scaled with the fleet's statistics, scored, never alerting; then its
own statistics (mean and standard deviation of exactly those samples, the spread never
below the trained devices' typical one) take over and it is judged like a trained device.
A day by default: a device seen for an hour has seen an hour of its daily cycle.
The learning samples form a segment of their own (no window mixes the two scalings), so
offline scoring and the feature pool, which learns online and keeps what it learned in
the store, give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from eyenet.detection.features import ABSOLUTE_SCALE_FLOOR, RELATIVE_SCALE_FLOOR, Scaler, split_segments

# Fewer rows than this cannot give a device its own statistics; it is scaled as the fleet.
MIN_DEVICE_ROWS = 10
NEVER_LEARNING_MS = -(2**62)


def log_prepared(values: np.ndarray, log_features: np.ndarray) -> np.ndarray:
    """``values`` with the log-scaled columns as ``log1p`` (a negative rate counts as 0)."""
    if not log_features.any():
        return values
    out = np.array(values, np.float64, copy=True)
    out[:, log_features] = np.log1p(np.maximum(out[:, log_features], 0.0))
    return out


@dataclass
class DeviceStats:
    STATE_KIND: ClassVar[str] = "device-scale"  # kept in the store (eyenet.detection.device_state)

    scaler: Scaler
    learned_at_ms: int = NEVER_LEARNING_MS   # rows at or before this were the learning period

    def to_dict(self) -> dict[str, Any]:
        return {**self.scaler.to_dict(), "learned_at_ms": self.learned_at_ms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceStats:
        return cls(Scaler.from_dict(data), int(data.get("learned_at_ms", NEVER_LEARNING_MS)))


@dataclass
class DeviceScaler:
    """The fleet's statistics and each trained device's own.

    A device's own statistics are trusted only when its history spans ``min_span_s`` (the
    learning period, a day by default): twenty minutes of a device have seen twenty minutes
    of its daily cycle, and judged in that narrow scale the next hours look anomalous.
    Trained devices with a shorter history (``fleet_scaled``) are judged in the fleet's
    scale, as every device was before per-device scaling."""

    fleet: Scaler
    devices: dict[str, Scaler]
    log_features: np.ndarray   # bool per feature
    fleet_scaled: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, values: np.ndarray, device_ids: np.ndarray, log_features: np.ndarray,
            ts_ms: np.ndarray | None = None, min_span_s: float = 0.0) -> DeviceScaler:
        x = log_prepared(values, log_features)
        order = np.argsort(device_ids, kind="stable")
        ids, starts, counts = np.unique(device_ids[order], return_index=True, return_counts=True)
        devices, short = {}, []
        for d, s, c in zip(ids, starts, counts, strict=True):
            rows = order[s:s + c]
            span_s = 0.0 if ts_ms is None else float(ts_ms[rows].max() - ts_ms[rows].min()) / 1000.0
            if c >= MIN_DEVICE_ROWS and (ts_ms is None or span_s >= min_span_s):
                devices[str(d)] = Scaler.fit(x[rows])
            else:
                short.append(str(d))
        return cls(Scaler.fit(x), devices, np.asarray(log_features, bool), short)

    def typical_scale(self) -> np.ndarray:
        """The median of the trained devices' own scales (the fleet's where none has one)."""
        if not self.devices:
            return self.fleet.scale
        return np.median(np.vstack([s.scale for s in self.devices.values()]), axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {"fleet": self.fleet.to_dict(), "log_features": self.log_features.tolist(),
                "devices": {d: s.to_dict() for d, s in self.devices.items()},
                "fleet_scaled": list(self.fleet_scaled)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceScaler:
        devices = {d: Scaler.from_dict(s) for d, s in data["devices"].items()}
        return cls(Scaler.from_dict(data["fleet"]), devices, np.asarray(data["log_features"], bool),
                   list(data.get("fleet_scaled", [])))


@dataclass
class ScaledRows:
    scaled: np.ndarray          # (rows, F) float32
    learning: np.ndarray        # bool: the device was still learning its statistics
    segments: np.ndarray        # the features' segments, split where learning ended
    learned: list[str]          # devices whose learning finished among these rows


@dataclass
class _Moments:
    """Running count, mean, sum of squared deviations (Welford) and largest magnitude per
    feature: a day of samples learned in constant memory."""

    first_ms: int
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    magnitude: np.ndarray

    @classmethod
    def start(cls, first_ms: int, n_features: int) -> _Moments:
        zeros = np.zeros(n_features)
        return cls(first_ms, zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy())

    def add(self, row: np.ndarray) -> None:
        ok = np.isfinite(row)
        x = np.where(ok, row, 0.0)
        self.count += ok
        delta = np.where(ok, x - self.mean, 0.0)
        self.mean += delta / np.maximum(self.count, 1)
        self.m2 += delta * np.where(ok, x - self.mean, 0.0)
        self.magnitude = np.maximum(self.magnitude, np.abs(x))

    def scaler(self, typical_scale: np.ndarray) -> Scaler:
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        floor = np.maximum(RELATIVE_SCALE_FLOOR * self.magnitude, ABSOLUTE_SCALE_FLOOR)
        # the learning period may see only part of a cycle: the spread is never taken below
        # what trained devices typically have
        return Scaler(self.mean.copy(), np.maximum(np.maximum(std, floor), typical_scale))


@dataclass
class ColdStart:
    """Scales rows per device and learns unseen devices' statistics from their first
    ``learn_s`` seconds of samples. ``lookup`` finds statistics learned earlier (the
    store); state is kept between calls, so a live scorer learns each device once."""

    scaler: DeviceScaler
    learn_s: float
    lookup: Callable[[str], DeviceStats | None] | None = None
    # the device a row key names (Serve keys each window apart: "<index>\x1f<device>")
    alias: Callable[[str], str] | None = None
    learned: dict[str, DeviceStats] = field(default_factory=dict)
    pending: dict[str, _Moments] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fleet_scaled = set(self.scaler.fleet_scaled)

    def stats(self, key: str) -> DeviceStats | None:
        device = self.alias(key) if self.alias is not None else key
        if device in self.scaler.devices:
            return DeviceStats(self.scaler.devices[device])
        if device in self._fleet_scaled:
            return DeviceStats(self.scaler.fleet)
        if device not in self.learned and key not in self.pending and self.lookup is not None:
            found = self.lookup(device)
            if found is not None:
                self.learned[device] = found
        return self.learned.get(device)

    def apply(self, values: np.ndarray, device_ids: np.ndarray, ts_ms: np.ndarray, segments: np.ndarray,
              advance: np.ndarray | None = None) -> ScaledRows:
        """Rows ordered by device then time; ``advance`` marks rows not seen before (default:
        all), the only ones a learning device learns from."""
        x = log_prepared(values, self.scaler.log_features)
        scaled = np.empty(x.shape, np.float32)
        learning = np.zeros(len(x), bool)
        boundary = np.zeros(len(x), bool)
        advance = np.ones(len(x), bool) if advance is None else np.asarray(advance, bool)
        finished: list[str] = []
        starts = np.flatnonzero(np.r_[True, device_ids[1:] != device_ids[:-1]]) if len(x) \
            else np.empty(0, np.int64)
        for a, b in zip(starts, np.r_[starts[1:], len(x)], strict=True):
            device = str(device_ids[a])
            stats = self.stats(device)
            if stats is None:
                stats = self._learn(device, x[a:b], ts_ms[a:b], advance[a:b])
                if stats is not None:
                    finished.append(device)
            if stats is None:
                scaled[a:b] = self.scaler.fleet.transform(x[a:b])
                learning[a:b] = True
                continue
            early = ts_ms[a:b] <= stats.learned_at_ms
            learning[a:b] = early
            scaled[a:b][early] = self.scaler.fleet.transform(x[a:b][early])
            scaled[a:b][~early] = stats.scaler.transform(x[a:b][~early])
            first_own = np.flatnonzero(~early)
            if len(first_own) and first_own[0] > 0:
                boundary[a + first_own[0]] = True
        return ScaledRows(scaled, learning, split_segments(segments, boundary), finished)

    def _learn(self, device: str, x: np.ndarray, ts_ms: np.ndarray,
               advance: np.ndarray) -> DeviceStats | None:
        for t, row in zip(ts_ms[advance], x[advance], strict=True):
            moments = self.pending.get(device)
            if moments is None:
                moments = self.pending[device] = _Moments.start(int(t), x.shape[1])
            moments.add(row)
            if int(t) - moments.first_ms >= self.learn_s * 1000 and moments.count.min() >= MIN_DEVICE_ROWS:
                stats = DeviceStats(moments.scaler(self.scaler.typical_scale()), int(t))
                self.learned[device] = stats
                del self.pending[device]
                return stats
        return None

