"""Incremental scoring of live telemetry: the same numbers as :meth:`Detector.score`, one
new sample at a time.

Offline scoring recomputes the error profile over a whole history. A live feed cannot
afford that: every second each device brings one sample, and re-scoring its last
``window + smoothing`` rows would cost ``smoothing`` forward passes per sample. So the
scorer keeps, per device, the few raw rows the next window needs and the running sums of
the exponentially weighted error profile, and runs one forward pass per new sample.

Why the numbers match offline scoring: features come from the shared ``build_features``
over the device's buffered rows (gap rule, forward fill, ratios), and the error profile
is pandas' ``ewm(span, adjust=True)`` written as running sums,
``num = w * num + x`` and ``den = w * den + 1`` with ``w = 1 - 2 / (span + 1)``; a missing
error decays the sums without adding to them (``ignore_na=False``); a gap restarts both.
One stated difference: a metric missing for longer than the buffer is forward-filled
offline from an older value the buffer no longer holds, and is missing here.

A device the scorer meets for the first time (a pool that starts or restarts, a device that
joins) is *primed* from ``history``: its stored rows just before its first new sample run
through the error profile, unreported, so the first new sample is judged by a warm profile
as offline scoring over that history would judge it. Without it the profile starts empty
and its first points are the mean of one, two, three errors: as noisy as unsmoothed
scores, and judged against a threshold fitted on smoothed ones. In the demo that start
put two quiet devices over the threshold for a point or three every time the pool started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eyenet.detection.detector import Detector
from eyenet.detection.device_scaling import DeviceStats
from eyenet.detection.features import ranked, window_targets
from eyenet.detection.regime import RegimeState
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, from_ms, parse_timestamps, to_ms

# Extra rows kept beyond one window, so a sample's window survives small reorderings.
BUFFER_SLACK_ROWS = 2
# A primed profile runs over this many smoothing spans of stored rows: after two spans the
# running weights hold 98 % of their steady-state sum (one span: 87 %).
PRIME_SPANS = 2

# history(device_ids, first_ms): stored rows of those devices before each one's first_ms
History = Callable[[list[str], dict[str, int]], pd.DataFrame]


@dataclass
class _DeviceState:
    ts_ms: np.ndarray                  # buffered raw rows, oldest first
    values: np.ndarray                 # (rows, metrics) float64
    last_scored_ms: int | None = None
    num: np.ndarray | None = None      # EWM running sums per feature
    den: np.ndarray | None = None
    prior_weight: float = 0.0          # the detector's error prior's weight in them, decaying
    primed_ms: int | None = None       # newest stored row the profile was primed with


class StreamScorer:
    """Scores newly arrived samples of many devices per call, keeping per-device state.

    Feed each sample once, in any device mix; samples of one device must arrive in time
    order across calls (the collectors' validator guarantees it: late samples are
    stored but not re-scored, see :meth:`update`).
    """

    def __init__(self, detector: Detector, buffer_rows: int | None = None,
                 lookup: Callable[[str], DeviceStats | None] | None = None,
                 regime_lookup: Callable[[str], RegimeState | None] | None = None,
                 history: History | None = None) -> None:
        detector.require_fitted()
        self.detector = detector
        self.metrics = list(detector.metrics)
        self.window = detector.config.window_steps
        self.buffer_rows = max(buffer_rows or 0, self.window + 1 + BUFFER_SLACK_ROWS)
        self.history = history if detector.smoothed else None
        self.prime_rows = self.window + PRIME_SPANS * detector.config.smoothing
        self.decay = 1.0 - 2.0 / (detector.config.smoothing + 1.0)
        # a segment's profile starts from the detector's typical normal error, at a full
        # history's weight (none for a model saved without one)
        self.prior = detector.error_prior if detector.error_prior is not None else 0.0
        self.full_weight = 1.0 / (1.0 - self.decay) if detector.error_prior is not None else 0.0
        self.smoothed = detector.smoothed  # a classifier's probability is not smoothed
        # each device's regime, carried between calls (None when adaptation is off)
        self.regimes = detector.regime_tracker(regime_lookup)
        self.last_regime_changes: list[tuple[str, int, list[str]]] = []
        # unseen devices' scale, learned from their first samples (lookup: learned earlier)
        self.cold = detector.cold_start(lookup)
        self.last_learned: list[tuple[str, DeviceStats]] = []
        self._devices: dict[str, _DeviceState] = {}
        # unscaled features of the rows the last update scored (drift tracking reads them)
        self.last_features = np.empty((0, len(detector.feature_names)), np.float32)

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def take_buffers(self, previous: StreamScorer) -> int:
        """Carry ``previous``'s buffered raw rows over (a switch to another model): the next
        sample of each device is scored at once instead of after a new window fills. Only
        raw telemetry moves; the error profile restarts, as after a gap, since the other
        model's errors mean nothing to this one. Returns how many devices moved (none when
        the models read different metrics)."""
        if previous.metrics != self.metrics:
            return 0
        for device, state in previous._devices.items():
            self._devices[device] = _DeviceState(state.ts_ms[-self.buffer_rows:].copy(),
                                                 state.values[-self.buffer_rows:].copy(),
                                                 state.last_scored_ms)
        return len(previous._devices)

    def _frame(self, device_ids: list[str]) -> pd.DataFrame:
        """Buffered rows of these devices as one telemetry frame, built from arrays at once
        (a frame per device costs more than the forward pass)."""
        states = [self._devices[d] for d in device_ids]
        values = np.vstack([s.values for s in states]) if states else np.empty((0, len(self.metrics)))
        frame = pd.DataFrame(values, columns=self.metrics)
        ts_ms = np.concatenate([s.ts_ms for s in states]) if states else np.empty(0, np.int64)
        frame.insert(0, TIMESTAMP, from_ms(ts_ms))
        rows_per_device = [len(s.ts_ms) for s in states]
        frame.insert(0, DEVICE, np.repeat(np.asarray(device_ids, dtype=object), rows_per_device))
        return frame

    def update(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Score the rows of ``samples`` (validated telemetry) that are newer than what each
        device has already had scored. Returns Detector.score's columns for those rows;
        older rows (late arrivals) are left out, as their neighbours were already scored."""
        self.last_features = np.empty((0, len(self.detector.feature_names)), np.float32)
        self.last_regime_changes, self.last_learned = [], []
        if samples.empty:
            return self._empty()
        ts_ms = to_ms(parse_timestamps(samples[TIMESTAMP])).to_numpy()
        devices = samples[DEVICE].astype(str).to_numpy()
        values = samples[self.metrics].to_numpy(np.float64, copy=True)
        self._prime(devices, ts_ms)
        touched = self._append(devices, ts_ms, values)
        if not touched:  # every sample was buffered already (a restarted collector re-sends)
            return self._empty()
        frame = self._frame(touched)
        feats = self.detector.features(frame)
        states = [self._devices[d] for d in feats.device_ids]
        last_ms = np.array([s.last_scored_ms if s.last_scored_ms is not None else -1 for s in states])
        primed_ms = np.array([s.primed_ms if s.primed_ms is not None else -1 for s in states])
        # rows the profile runs over: the new ones and, for a primed device, its stored ones
        warm = feats.timestamps_ms > last_ms
        new = warm & (feats.timestamps_ms > primed_ms)
        # only new rows teach an unseen device its scale or move a device's regime
        scaling = self.detector.scaled(feats, self.cold, advance=new)
        self.last_learned = [(d, self.cold.learned[d]) for d in scaling.learned]
        scaled, changes = self.detector.adapted(feats, scaling.scaled, self.regimes,
                                                advance=new & ~scaling.learning)
        segments = scaling.segments
        targets = window_targets(segments, self.window)
        is_target = np.zeros(len(feats), bool)
        is_target[targets] = True
        point_contrib, point_raw = self.detector.point_errors(scaled, np.flatnonzero(is_target & warm))
        contrib = np.full((len(feats), scaled.shape[1]), np.nan)
        raw = np.full(len(feats), np.nan)
        contrib[is_target & warm] = point_contrib
        if point_raw is not None:
            raw[is_target & warm] = point_raw
        if self.smoothed:
            self._smooth(feats.device_ids, segments, feats.timestamps_ms, warm, contrib, raw)
        rows = np.flatnonzero(new)
        self.last_features = feats.values[rows]
        scored = self.detector.scored_rows(feats, raw, contrib, is_target, changes, scaling.learning)
        self.last_regime_changes = scored.regime_events()
        out = scored.frame(rows)
        self._trim(out)
        return out

    # -- internals ------------------------------------------------------------------------
    def _prime(self, devices: np.ndarray, ts_ms: np.ndarray) -> None:
        """Buffer the stored rows before the first sample of each device met for the first
        time (at most ``prime_rows`` of them); a device with none starts empty."""
        if self.history is None:
            return
        first: dict[str, int] = {}
        for device, t in zip(devices.tolist(), ts_ms.tolist(), strict=True):
            if device not in self._devices and t < first.get(device, t + 1):
                first[device] = int(t)
        if not first:
            return
        stored = self.history(sorted(first), first)
        for device in first:
            self._devices[device] = _DeviceState(np.empty(0, np.int64), np.empty((0, len(self.metrics))))
        if stored.empty:
            return
        stored_ms = to_ms(parse_timestamps(stored[TIMESTAMP])).to_numpy()
        stored_devices = stored[DEVICE].astype(str).to_numpy()
        before = stored_ms < np.array([first.get(d, -1) for d in stored_devices])
        self._append(stored_devices[before], stored_ms[before],
                     stored[self.metrics].to_numpy(np.float64, copy=True)[before])
        for device in set(stored_devices[before].tolist()):
            state = self._devices[device]
            state.ts_ms, state.values = state.ts_ms[-self.prime_rows:], state.values[-self.prime_rows:]
            state.primed_ms = int(state.ts_ms[-1])

    def _append(self, devices: np.ndarray, ts_ms: np.ndarray, values: np.ndarray) -> list[str]:
        order = np.lexsort((ts_ms, devices))
        devices, ts_ms, values = devices[order], ts_ms[order], values[order]
        starts = np.flatnonzero(np.r_[True, devices[1:] != devices[:-1]])
        ends = np.r_[starts[1:], len(devices)]
        touched = []
        empty_values = np.empty((0, len(self.metrics)))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            device = str(devices[a])
            state = self._devices.get(device)
            if state is None:
                state = self._devices[device] = _DeviceState(np.empty(0, np.int64), empty_values)
            if len(state.ts_ms) == 0 or ts_ms[a] > state.ts_ms[-1]:
                # the usual case: every sample is newer than the buffer, already in order
                state.ts_ms = np.concatenate((state.ts_ms, ts_ms[a:b]))
                state.values = np.concatenate((state.values, values[a:b]))
                touched.append(device)
                continue
            seen = set(state.ts_ms.tolist())
            keep = np.array([t not in seen for t in ts_ms[a:b].tolist()], bool)
            if not keep.any():
                continue
            all_ts = np.concatenate((state.ts_ms, ts_ms[a:b][keep]))
            all_values = np.concatenate((state.values, values[a:b][keep]))
            order_in = np.argsort(all_ts, kind="stable")
            state.ts_ms, state.values = all_ts[order_in], all_values[order_in]
            touched.append(device)
        return touched

    def _smooth(self, device_ids: np.ndarray, segments: np.ndarray, ts_ms: np.ndarray,
                new: np.ndarray, contrib: np.ndarray, raw: np.ndarray) -> None:
        """Advance each device's EWM sums over its ``new`` rows (primed ones included) in
        time order, in place: the j-th new row of every device in one array step."""
        rows = np.flatnonzero(new)
        if len(rows) == 0:
            return
        n_feat = contrib.shape[1]
        starts = np.flatnonzero(np.r_[True, device_ids[1:] != device_ids[:-1]])  # rows sorted by device
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(device_ids)]))
        groups, slot, rank = ranked(group[rows])
        states = [self._devices[device_ids[starts[g]]] for g in groups.tolist()]
        # continue the running sums only if the last scored row is in the same segment
        last_ms = np.full(len(starts), -2, np.int64)   # -2: no row of a device not in the call
        last_ms[groups] = [s.last_scored_ms or -1 for s in states]
        hits = np.flatnonzero(ts_ms == last_ms[group])
        hit_groups, hit_first = np.unique(group[hits], return_index=True)
        prev = np.full(len(groups), -1)
        prev[np.searchsorted(groups, hit_groups)] = hits[hit_first]
        segment = segments[rows[rank == 0]]
        same = (prev >= 0) & (segments[np.maximum(prev, 0)] == segment) & \
            np.array([s.num is not None for s in states])
        num, den = np.zeros((len(groups), n_feat)), np.zeros((len(groups), n_feat))
        weight = np.full(len(groups), self.full_weight)
        for k in np.flatnonzero(same).tolist():
            num[k], den[k], weight[k] = states[k].num, states[k].den, states[k].prior_weight
        for j in range(int(rank.max()) + 1):
            at = np.flatnonzero(rank == j)
            r, k = rows[at], slot[at]
            restart = segments[r] != segment[k]    # a gap among the new rows: a new segment
            if restart.any():
                num[k[restart]], den[k[restart]] = 0.0, 0.0
                weight[k[restart]] = self.full_weight
                segment[k] = segments[r]
            x = contrib[r]
            finite = np.isfinite(x)
            num[k] = self.decay * num[k] + np.where(finite, x, 0.0)
            den[k] = self.decay * den[k] + finite
            weight[k] *= self.decay
            # as eyenet.detection.scoring.smoothed_errors: the prior starts each segment
            top, bottom = num[k] + weight[k, None] * self.prior, den[k] + weight[k, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                contrib[r] = np.where(den[k] > 0, top / np.where(den[k] > 0, bottom, 1.0), np.nan)
            raw[r] = contrib[r].sum(axis=1)
        for k, state in enumerate(states):
            state.num, state.den, state.prior_weight = num[k].copy(), den[k].copy(), float(weight[k])

    def _trim(self, scored: pd.DataFrame) -> None:
        if scored.empty:
            return
        devices = scored[DEVICE].to_numpy()
        ts_ms = to_ms(scored[TIMESTAMP]).to_numpy()
        starts = np.flatnonzero(np.r_[True, devices[1:] != devices[:-1]])  # sorted by device
        newest = np.maximum.reduceat(ts_ms, starts)
        keep = self.buffer_rows
        for a, t in zip(starts.tolist(), newest.tolist(), strict=True):
            state = self._devices[devices[a]]
            state.last_scored_ms = int(t)
            if len(state.ts_ms) > keep:
                state.ts_ms, state.values = state.ts_ms[-keep:], state.values[-keep:]

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame({DEVICE: pd.Series(dtype=object), TIMESTAMP: from_ms([]),
                             "score": pd.Series(dtype=float), "raw_score": pd.Series(dtype=float),
                             "threshold": pd.Series(dtype=float), "is_anomaly": pd.Series(dtype=bool),
                             "top_features": pd.Series(dtype=object), "top_feature": pd.Series(dtype=object),
                             "learning": pd.Series(dtype=bool), "regime_change": pd.Series(dtype=object)})
