"""Regime tracking: a device that moves to a new normal level is judged against that level.

A model learns one device's normal from its training history. When a metric moves to a
new level and stays there (a new customer on a link, a service moved to another host),
every later point looks anomalous, and a detector that says so for the rest of time is an
alert storm. The tracker follows each device's features causally in scaled units:

* a smoothed level ``m`` (EWM over ``level_steps``) and noise ``d`` (EWM of ``|z - m|``),
  against each feature's noise in training (:func:`training_deviation`);
* a feature whose smoothed level stays more than ``shift_z`` standard deviations of its
  noise away from its baseline, on one side, or whose noise stays more than
  ``SPREAD_FACTOR`` times the spread it is judged with, for ``adapt_steps`` consecutive
  rows is in a new regime: its baseline becomes the current level and its spread the noise
  now over training's (never below 1), and the change is reported (``regime_change``,
  naming the features);
* inputs reach the model as ``(z - baseline) / spread``: unchanged until a regime change,
  and judged against the new level after one.

Spikes and incidents shorter than ``adapt_steps`` never move the baseline, so they are
still found, and a spike inside the new regime is found against the new level. A daily
cycle crosses its mean twice a day and never counts as a regime. The price is stated: an
incident that holds one level for longer than ``adapt_steps`` becomes the new normal.

The same object runs offline (a fresh state per scoring call, rows in time order) and in
the feature pool (state carried per device between calls), so both decide alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

# Mean absolute deviation of a unit-variance normal variable: the deviation of training data
# in scaled units, so deviation / NORMAL_DEVIATION is the spread in training spreads.
NORMAL_DEVIATION = 0.8
SPREAD_FACTOR = 2.0
# A feature constant in training has no deviation; its noise is judged against this instead.
MIN_DEVIATION = 0.05
MAX_UNDO = 16


def training_deviation(scaled: np.ndarray) -> np.ndarray:
    """Each feature's mean absolute deviation from its training median, in scaled units:
    what "normal noise" is for the tracker. Scaling by standard deviation leaves a spiky
    metric (flat, with rare bursts) a deviation far below 1, and its bursts or a move of a
    few standard deviations are many times its normal noise."""
    return np.maximum(np.mean(np.abs(np.asarray(scaled, np.float64)), axis=0), MIN_DEVIATION)


@dataclass
class RegimeState:
    """One device's tracker state, per feature (scaled units)."""

    STATE_KIND: ClassVar[str] = "regime"  # kept in the store (eyenet.detection.device_state)

    baseline: np.ndarray
    spread: np.ndarray
    level: np.ndarray
    deviation: np.ndarray
    run: np.ndarray          # consecutive rows the level sat beyond the band
    side: np.ndarray         # +1 / -1: which side the run is on
    started: bool = False
    changes: int = 0
    # the last changes as (ms, features, baseline and spread before): rows a live scorer
    # scored before a change are transformed as they were when it scored them
    undo: list[tuple[int, list[int], list[float], list[float]]] = field(default_factory=list)

    @classmethod
    def fresh(cls, n_features: int) -> RegimeState:
        zeros = np.zeros(n_features)
        return cls(zeros.copy(), np.ones(n_features), zeros.copy(), np.ones(n_features),
                   np.zeros(n_features, np.int64), zeros.copy())

    def copy(self) -> RegimeState:
        return RegimeState(self.baseline.copy(), self.spread.copy(), self.level.copy(),
                           self.deviation.copy(), self.run.copy(), self.side.copy(), self.started,
                           self.changes, list(self.undo))

    def to_dict(self) -> dict[str, object]:
        return {"baseline": self.baseline.tolist(), "spread": self.spread.tolist(),
                "level": self.level.tolist(), "deviation": self.deviation.tolist(),
                "run": self.run.tolist(), "side": self.side.tolist(), "started": self.started,
                "changes": self.changes, "undo": [list(u) for u in self.undo]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RegimeState:
        return cls(*(np.asarray(data[k], np.float64) for k in ("baseline", "spread", "level", "deviation")),
                   np.asarray(data["run"], np.int64), np.asarray(data["side"], np.float64),
                   bool(data["started"]), int(data["changes"]),
                   [(int(u[0]), list(u[1]), list(u[2]), list(u[3])) for u in data.get("undo", [])])

    def params_at(self, ts_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """(baseline, spread) in force at ``ts_ms``: now, less the changes made after it."""
        baseline, spread = self.baseline.copy(), self.spread.copy()
        for at_ms, features, old_baseline, old_spread in reversed(self.undo):
            if at_ms <= ts_ms:
                break
            baseline[features], spread[features] = old_baseline, old_spread
        return baseline, spread


@dataclass
class RegimeChange:
    row: int                 # index into the rows passed to RegimeTracker.apply
    features: list[int]      # feature columns that moved
    ratio: list[float]       # new spread / training spread of each


@dataclass
class RegimeTracker:
    adapt_steps: int
    shift_z: float = 3.0
    # each feature's mean absolute deviation in training, scaled units (training_deviation)
    reference: np.ndarray | None = None
    level_steps: int | None = None
    states: dict[str, RegimeState] = field(default_factory=dict)
    # a device's state kept earlier (the store), asked for on its first row
    lookup: Callable[[str], RegimeState | None] | None = None
    # the device a row key names (Serve keys each window apart)
    alias: Callable[[str], str] | None = None
    # frozen: apply each device's regime as found, never move it (Serve follows the pool)
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.adapt_steps < 1:
            raise ValueError(f"adapt_steps must be >= 1, got {self.adapt_steps}")
        if self.reference is not None:
            self.reference = np.maximum(np.asarray(self.reference, np.float64), MIN_DEVIATION)
        steps = self.level_steps or max(3, self.adapt_steps // 10)
        self._alpha = 2.0 / (steps + 1.0)

    def can_change(self, device_ids: np.ndarray) -> bool:
        """False when a fresh tracker could not see a regime change in these rows (fewer
        rows per device than a regime takes): a stateless caller may skip it, exactly. A
        tracker that looks regimes up always applies them."""
        if self.lookup is not None:
            return True
        _, counts = np.unique(np.asarray(device_ids, dtype=object).astype(str), return_counts=True)
        return bool(self.states) or (len(counts) > 0 and int(counts.max()) >= self.adapt_steps)

    def apply(self, scaled: np.ndarray, device_ids: np.ndarray, advance: np.ndarray | None = None,
              ts_ms: np.ndarray | None = None) -> tuple[np.ndarray, list[RegimeChange]]:
        """Inputs as the model should see them, and the regime changes among the rows.

        Rows are ordered by device then time. ``advance`` marks the rows that move the state
        on (default: all); the others (rows a live scorer already saw, before its new ones)
        are transformed as they were at ``ts_ms``, so a window that spans a change gives the
        numbers offline scoring gives.

        A live scorer's call holds thousands of devices with one new row each, so the state
        is stepped for all devices at once, one row of each per step (a Python loop per row
        cost more than the forward pass). A device whose advancing rows are not the last of
        its rows (no caller gives such a mask) is stepped row by row, in order."""
        out = np.asarray(scaled, np.float64).copy()
        changes: list[RegimeChange] = []
        if len(out) == 0:
            return out.astype(np.float32), changes
        advance = np.ones(len(out), bool) if advance is None else np.asarray(advance, bool)
        if self.frozen:
            advance = np.zeros(len(out), bool)
        starts = np.flatnonzero(np.r_[True, device_ids[1:] != device_ids[:-1]])
        ends = np.r_[starts[1:], len(out)]
        counted = np.r_[0, np.cumsum(advance)]
        firsts = ends - (counted[ends] - counted[starts])   # where each device's advancing rows start
        suffix = (counted[ends] - counted[firsts]) == ends - firsts
        n_features = out.shape[1]
        group_baseline = np.zeros((len(starts), n_features))
        group_spread = np.ones((len(starts), n_features))
        as_then = np.zeros(len(out), bool)       # leading rows transformed by the state as found
        steppers: list[tuple[int, int, RegimeState]] = []
        states = [self._state(device_ids[a], n_features) for a in starts.tolist()]
        known = [id(s) for s in states if s is not None]
        if len(set(known)) < len(known):  # keys aliased to one device: its rows in key order
            suffix[:] = False
        for g, (a, k, b, ok, state) in enumerate(zip(starts.tolist(), firsts.tolist(), ends.tolist(),
                                                     suffix.tolist(), states, strict=True)):
            if state is None:  # frozen, no regime kept for it: judged against training, as is
                continue
            if not ok:
                self._apply_rows(state, out, a, b, advance, ts_ms, changes)
                continue
            if k > a:
                if ts_ms is None or not state.undo or int(ts_ms[a]) >= state.undo[-1][0]:
                    group_baseline[g], group_spread[g] = state.baseline, state.spread
                    as_then[a:k] = True
                else:  # rows from before the device's last changes: each with its own
                    for r in range(a, k):
                        baseline, spread = state.params_at(int(ts_ms[r]))
                        out[r] = (out[r] - baseline) / spread
            if b > k:
                steppers.append((k, b, state))
        group = np.repeat(np.arange(len(starts)), ends - starts)[as_then]
        out[as_then] = (out[as_then] - group_baseline[group]) / group_spread[group]
        if steppers:
            self._step_devices(steppers, out, ts_ms, changes)
        changes.sort(key=lambda c: c.row)
        return out.astype(np.float32), changes

    def _state(self, key: object, n_features: int) -> RegimeState | None:
        device = str(key) if self.alias is None else self.alias(str(key))
        state = self.states.get(device)
        if state is None and self.lookup is not None:
            state = self.lookup(device)
            if state is not None:
                self.states[device] = state
        if state is None and not self.frozen:
            state = self.states[device] = RegimeState.fresh(n_features)
        return state

    def _apply_rows(self, state: RegimeState, out: np.ndarray, a: int, b: int, advance: np.ndarray,
                    ts_ms: np.ndarray | None, changes: list[RegimeChange]) -> None:
        """One device's rows ``a:b`` in order, each advancing row stepping the state."""
        for r in range(a, b):
            if not advance[r]:
                baseline, spread = (state.baseline, state.spread) if ts_ms is None or not state.undo \
                    else state.params_at(int(ts_ms[r]))
                out[r] = (out[r] - baseline) / spread
                continue
            stepped = _Stacked.of([state])
            self._step(stepped, np.array([0]), out[r:r + 1], np.array([r]), ts_ms, [state], changes)
            stepped.store([state])
            out[r] = (out[r] - state.baseline) / state.spread

    def _step_devices(self, steppers: list[tuple[int, int, RegimeState]], out: np.ndarray,
                      ts_ms: np.ndarray | None, changes: list[RegimeChange]) -> None:
        """Step every device over its advancing rows ``k:b``: the j-th row of each at once."""
        states = [s for _, _, s in steppers]
        stacked = _Stacked.of(states)
        firsts = np.array([k for k, _, _ in steppers])
        lengths = np.array([b - k for k, b, _ in steppers])
        for j in range(int(lengths.max())):
            active = np.flatnonzero(lengths > j)
            rows = firsts[active] + j
            self._step(stacked, active, out[rows], rows, ts_ms, states, changes)
            out[rows] = (out[rows] - stacked.baseline[active]) / stacked.spread[active]
        stacked.store(states)

    def _step(self, st: _Stacked, active: np.ndarray, z: np.ndarray, rows: np.ndarray,
              ts_ms: np.ndarray | None, states: list[RegimeState], changes: list[RegimeChange]) -> None:
        """Move the ``active`` devices' state on by one row each (``z``: their rows)."""
        reference = self._reference(z.shape[1])
        started = st.started[active][:, None]
        level = np.where(started, st.level[active] + self._alpha * (z - st.level[active]), z)
        deviation = np.where(started, st.deviation[active], reference)
        deviation = deviation + self._alpha * (np.abs(z - level) - deviation)
        baseline, spread = st.baseline[active], st.spread[active]
        # noise now, in multiples of training's (the spread a new regime is judged with)
        ratio = deviation / reference
        # the band: shift_z standard deviations of the noise the regime is judged with
        noise = spread * reference / NORMAL_DEVIATION
        offset = level - baseline
        beyond = np.abs(offset) > self.shift_z * noise
        side = np.sign(offset)
        same = beyond & (side == st.side[active])
        # noise several times (or, after a noisy regime, a fraction of) the spread judged
        # against is a regime too, level shift or not
        spread_moved = (ratio > SPREAD_FACTOR * spread) | \
                       ((spread > 1.0) & (np.maximum(ratio, 1.0) * SPREAD_FACTOR < spread))
        run = np.where(same | (spread_moved & ~beyond), st.run[active] + 1, np.where(beyond, 1, 0))
        st.level[active], st.deviation[active], st.started[active] = level, deviation, True
        st.side[active] = np.where(beyond, side, 0.0)
        moved = run >= self.adapt_steps
        for i in np.flatnonzero(moved.any(axis=1)).tolist():
            features = np.flatnonzero(moved[i])
            g, row = int(active[i]), int(rows[i])
            state = states[g]
            old_baseline, old_spread = baseline[i, features].tolist(), spread[i, features].tolist()
            baseline[i, features] = level[i, features]
            spread[i, features] = np.maximum(ratio[i, features], 1.0)
            run[i, features] = 0
            state.changes += 1
            changes.append(RegimeChange(row, features.tolist(), spread[i, features].tolist()))
            if ts_ms is not None:
                undo = (int(ts_ms[row]), features.tolist(), old_baseline, old_spread)
                state.undo = [*state.undo[-(MAX_UNDO - 1):], undo]
        st.baseline[active], st.spread[active], st.run[active] = baseline, spread, run

    def _reference(self, n_features: int) -> np.ndarray:
        if self.reference is None:
            return np.full(n_features, NORMAL_DEVIATION)
        return self.reference


@dataclass
class _Stacked:
    """Several devices' tracker states as arrays (a row per device), stepped together."""

    baseline: np.ndarray
    spread: np.ndarray
    level: np.ndarray
    deviation: np.ndarray
    run: np.ndarray
    side: np.ndarray
    started: np.ndarray

    @classmethod
    def of(cls, states: list[RegimeState]) -> _Stacked:
        return cls(*(np.array([getattr(s, name) for s in states]) for name in _STACKED),
                   np.array([s.started for s in states], bool))

    def store(self, states: list[RegimeState]) -> None:
        for i, state in enumerate(states):
            for name in _STACKED:
                getattr(state, name)[:] = getattr(self, name)[i]
            state.started = bool(self.started[i])


_STACKED = ("baseline", "spread", "level", "deviation", "run", "side")
