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

from eyenet.detection.features import (
    ABSOLUTE_SCALE_FLOOR,
    RELATIVE_SCALE_FLOOR,
    Scaler,
    ranked,
    split_segments,
)

# Fewer rows than this cannot give a device its own statistics; it is scaled as the fleet.
MIN_DEVICE_ROWS = 10
NEVER_LEARNING_MS = -(2**62)
STILL_LEARNING_MS = 2**62   # no statistics yet: every row is in the learning period


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
        # one object per trained device, built once (a live scorer asks for thousands a tick)
        self._trained = {d: DeviceStats(s) for d, s in self.scaler.devices.items()}
        self._fleet_stats = DeviceStats(self.scaler.fleet)
        self._typical_scale: np.ndarray | None = None

    def stats(self, key: str) -> DeviceStats | None:
        device = self.alias(key) if self.alias is not None else key
        trained = self._trained.get(device)
        if trained is not None:
            return trained
        if device in self._fleet_scaled:
            return self._fleet_stats
        if device not in self.learned and key not in self.pending and self.lookup is not None:
            found = self.lookup(device)
            if found is not None:
                self.learned[device] = found
        return self.learned.get(device)

    def typical_scale(self) -> np.ndarray:
        if self._typical_scale is None:
            self._typical_scale = self.scaler.typical_scale()
        return self._typical_scale

    def apply(self, values: np.ndarray, device_ids: np.ndarray, ts_ms: np.ndarray, segments: np.ndarray,
              advance: np.ndarray | None = None) -> ScaledRows:
        """Rows ordered by device then time; ``advance`` marks rows not seen before (default:
        all), the only ones a learning device learns from. Every row is scaled in one array
        operation: a live call holds thousands of devices with a row or two each."""
        x = log_prepared(values, self.scaler.log_features)
        n = len(x)
        advance = np.ones(n, bool) if advance is None else np.asarray(advance, bool)
        starts = np.flatnonzero(np.r_[True, device_ids[1:] != device_ids[:-1]]) if n \
            else np.empty(0, np.int64)
        ends = np.r_[starts[1:], n].astype(np.int64)
        keys = [str(device_ids[a]) for a in starts.tolist()]
        stats = [self.stats(k) for k in keys]
        group = np.repeat(np.arange(len(starts)), ends - starts)
        unknown = [g for g, st in enumerate(stats) if st is None]
        finished = self._learn(keys, unknown, group, x, ts_ms, advance) if unknown else {}
        for g, st in finished.items():
            stats[g] = st
        fleet = self.scaler.fleet
        # a device with no statistics yet is in its learning period for all of its rows
        own = [fleet if st is None else st.scaler for st in stats]
        center = np.array([s.center for s in own]).reshape(-1, x.shape[1])
        scale = np.array([s.scale for s in own]).reshape(-1, x.shape[1])
        learned_at = np.array([STILL_LEARNING_MS if st is None else st.learned_at_ms for st in stats],
                              np.int64)
        learning = np.asarray(ts_ms, np.int64) <= learned_at[group]
        center_rows = np.where(learning[:, None], fleet.center, center[group])
        scale_rows = np.where(learning[:, None], fleet.scale, scale[group])
        scaled = Scaler(center_rows, scale_rows).transform(x) if n else np.empty(x.shape, np.float32)
        # a device's own scaling starts a segment (no window mixes the two scalings)
        first_own = np.minimum.reduceat(np.where(learning, n, np.arange(n)), starts) if n \
            else np.empty(0, np.int64)
        boundary = np.zeros(n, bool)
        cut = (first_own > starts) & (first_own < ends)
        boundary[first_own[cut]] = True
        return ScaledRows(scaled, learning, split_segments(segments, boundary),
                          [keys[g] for g in sorted(finished)])

    def _learn(self, keys: list[str], unknown: list[int], group: np.ndarray, x: np.ndarray,
               ts_ms: np.ndarray, advance: np.ndarray) -> dict[int, DeviceStats]:
        """Add the unknown devices' advancing rows to their running moments, the j-th row of
        every device at once; returns the devices (group index) whose learning finished, with
        the statistics learned, each at the row where it finished."""
        wanted = np.zeros(len(keys), bool)
        wanted[unknown] = True
        rows = np.flatnonzero(wanted[group] & advance)
        if len(rows) == 0:
            return {}
        groups, slots, rank = ranked(group[rows])
        first = np.flatnonzero(rank == 0)
        moments = [self.pending.get(keys[g]) or _Moments.start(int(ts_ms[rows[f]]), x.shape[1])
                   for g, f in zip(groups.tolist(), first.tolist(), strict=True)]
        st = _StackedMoments.of(moments)
        done = np.zeros(len(groups), bool)
        finished: dict[int, DeviceStats] = {}
        for j in range(int(rank.max()) + 1):
            at = np.flatnonzero(rank == j)
            slot = slots[at]
            live = ~done[slot]
            at, slot = at[live], slot[live]
            if len(at) == 0:
                break
            st.add(slot, x[rows[at]])
            t = ts_ms[rows[at]].astype(np.int64)
            ready = (t - st.first_ms[slot] >= self.learn_s * 1000) & \
                    (st.count[slot].min(axis=1) >= MIN_DEVICE_ROWS)
            for i in np.flatnonzero(ready).tolist():
                k = int(slot[i])
                g = int(groups[k])
                stats = DeviceStats(st.moments(k).scaler(self.typical_scale()), int(t[i]))
                self.learned[keys[g]] = finished[g] = stats
                self.pending.pop(keys[g], None)
                done[k] = True
        for k, g in enumerate(groups.tolist()):
            if not done[k]:
                self.pending[keys[g]] = st.moments(k)
        return finished


@dataclass
class _StackedMoments:
    """Several devices' running moments as arrays (a row per device), added to together."""

    first_ms: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    magnitude: np.ndarray

    @classmethod
    def of(cls, moments: list[_Moments]) -> _StackedMoments:
        return cls(np.array([m.first_ms for m in moments], np.int64),
                   *(np.array([getattr(m, name) for m in moments], np.float64)
                     for name in ("count", "mean", "m2", "magnitude")))

    def add(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """:meth:`_Moments.add` of one row for each of ``slots``."""
        ok = np.isfinite(rows)
        x = np.where(ok, rows, 0.0)
        count = self.count[slots] + ok
        mean = self.mean[slots]
        delta = np.where(ok, x - mean, 0.0)
        mean = mean + delta / np.maximum(count, 1)
        self.m2[slots] = self.m2[slots] + delta * np.where(ok, x - mean, 0.0)
        self.count[slots], self.mean[slots] = count, mean
        self.magnitude[slots] = np.maximum(self.magnitude[slots], np.abs(x))

    def moments(self, k: int) -> _Moments:
        return _Moments(int(self.first_ms[k]), self.count[k].copy(), self.mean[k].copy(),
                        self.m2[k].copy(), self.magnitude[k].copy())
