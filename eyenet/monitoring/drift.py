"""Feature drift against the training reference, in bounded memory.

The scoring actors see every feature value but the monitor must not: shipping raw values
to one singleton would make it the bottleneck of the fleet. So each actor reduces a batch
to counts in the reference's own PSI bins (:func:`bin_counts`, a few integers per
feature), and the monitor's :class:`DriftTracker` sums those counts in time buckets over a
sliding window. Memory is ``window_s / bucket_s`` buckets of ``features x bins`` integers,
however many values flow through.

Both drift scores come from the same binned counts:

* PSI (population stability index): ``sum((p_cur - p_ref) * ln(p_cur / p_ref))`` over the
  bins, with empty bins floored at :data:`PSI_EPSILON` so one empty bin cannot make it
  infinite. Rules of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift.
* KS: the largest gap between the current and the reference CDF, evaluated at the
  reference's bin edges (the only points where the binned CDFs are known exactly).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

PSI_EPSILON = 1e-4
DRIFT_METHODS = ("psi", "ks")
STATE_VERSION = 1


def bin_counts(values: np.ndarray | None, names: list[str],
               reference: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Counts of the finite values of each referenced feature in the reference's bins.

    ``values`` is ``(rows, features)`` (extra leading axes, e.g. windows x steps, are
    flattened). Features absent from the reference are skipped; NaN/inf are not counted,
    so a broken sensor shows up as missing data rather than as drift. This runs on every
    scored batch, hence one ``searchsorted`` + ``bincount`` per feature and no Python loop
    over rows. No values or no reference (a model saved without one) count nothing.
    """
    if values is None or not reference or np.size(values) == 0:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[1] != len(names):
        raise ValueError(f"values have {arr.shape[1]} feature columns but {len(names)} names")
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        ref = reference.get(name)
        if ref is None:
            continue
        edges = np.asarray(ref["bin_edges"], dtype=np.float64)
        col = arr[:, i]
        col = col[np.isfinite(col)]
        out[name] = np.bincount(np.searchsorted(edges, col, side="right"),
                                minlength=len(edges) + 1).astype(np.int64)
    return out


def psi(counts: np.ndarray, ref_fractions: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of binned ``counts`` against reference fractions."""
    cur = np.maximum(counts / max(counts.sum(), 1), epsilon)
    ref = np.maximum(ref_fractions, epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks(counts: np.ndarray, ref_fractions: np.ndarray) -> float:
    """Largest CDF gap at the bin edges (the last bin's CDF is 1 for both, so skipped)."""
    cur = np.cumsum(counts / max(counts.sum(), 1))[:-1]
    ref = np.cumsum(ref_fractions)[:-1]
    return float(np.max(np.abs(cur - ref))) if len(cur) else 0.0


def reference_fingerprint(reference: Mapping[str, Any]) -> str:
    """A short hash of the feature names and bin edges: saved counts are only meaningful
    under the exact bins they were counted in, so a restored state must match it."""
    spec = {name: [float(e) for e in ref["bin_edges"]] for name, ref in sorted(reference.items())}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class DriftTracker:
    """Sliding-window binned counts per feature and their drift score against a reference.

    ``add`` merges counts into the bucket of their arrival time (``floor(t / bucket_s)``);
    buckets whose whole span lies before ``now - window_s`` fall out. A feature has no
    score (None) until the window holds ``min_samples`` of its values: PSI on a handful of
    values is noise and would raise false alerts after every restart.
    """

    def __init__(self, reference: Mapping[str, Any], method: str = "psi", window_s: float = 3600.0,
                 bucket_s: float = 60.0, min_samples: int = 500,
                 now_s: Callable[[], float] = time.time) -> None:
        if method not in DRIFT_METHODS:
            raise ValueError(f"drift method must be one of {DRIFT_METHODS}, got {method!r}")
        if not (window_s > 0 and bucket_s > 0):
            raise ValueError(f"window_s ({window_s}) and bucket_s ({bucket_s}) must be > 0")
        self.method = method
        self.window_s = float(window_s)
        self.bucket_s = float(min(bucket_s, window_s))
        self.min_samples = int(min_samples)
        self.now_s = now_s
        self.reference = dict(reference)
        self.fingerprint = reference_fingerprint(self.reference)
        self._fractions = {name: np.asarray(ref["bin_fractions"], dtype=np.float64)
                           for name, ref in self.reference.items()}
        self._buckets: deque[tuple[float, dict[str, np.ndarray]]] = deque()
        self.rejected = 0  # count vectors whose length did not match the reference's bins

    @property
    def features(self) -> list[str]:
        return sorted(self._fractions)

    def add(self, counts: Mapping[str, Any], at_s: float | None = None) -> None:
        """Merge one batch's bin counts (arrays or lists, as :func:`bin_counts` returns)."""
        now = self.now_s()
        t = now if at_s is None else min(float(at_s), now)  # no buckets in the future
        start = math.floor(t / self.bucket_s) * self.bucket_s
        self._evict(now)
        if start + self.bucket_s <= now - self.window_s:
            return  # older than the window: it would be evicted at once
        bucket = self._bucket(start)
        for name, raw in counts.items():
            ref = self._fractions.get(name)
            if ref is None:
                continue
            vec = np.asarray(raw, dtype=np.int64)
            if vec.shape != ref.shape:
                self.rejected += 1
                continue
            if name in bucket:
                bucket[name] += vec
            else:
                bucket[name] = vec.copy()

    def sample_counts(self) -> dict[str, int]:
        """Values per feature currently in the window."""
        return {name: int(total.sum()) for name, total in self._totals().items()}

    def scores(self) -> dict[str, float | None]:
        """Drift score per referenced feature; None while it has < ``min_samples`` values."""
        totals = self._totals()
        score = psi if self.method == "psi" else ks
        out: dict[str, float | None] = {}
        for name in self.features:
            total = totals.get(name)
            if total is None or total.sum() < self.min_samples:
                out[name] = None
            else:
                out[name] = score(total, self._fractions[name])
        return out

    def reset(self) -> None:
        self._buckets.clear()

    # -- persistence ------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-able state: settings, the reference fingerprint and the buckets in the window."""
        self._evict(self.now_s())
        return {"version": STATE_VERSION, "method": self.method, "window_s": self.window_s,
                "bucket_s": self.bucket_s, "min_samples": self.min_samples,
                "fingerprint": self.fingerprint, "features": self.features,
                "buckets": [[start, {n: c.tolist() for n, c in counts.items()}]
                            for start, counts in self._buckets]}

    def load_state(self, state: Mapping[str, Any]) -> bool:
        """Restore buckets saved by :meth:`to_state` under this tracker's own settings.

        Returns False (and loads nothing) when the state was counted under another
        reference: counts in different bins cannot be compared with this reference.
        """
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != self.fingerprint:
            return False
        self._buckets.clear()
        for start, counts in sorted(state.get("buckets", []), key=lambda b: b[0]):
            self.add(counts, at_s=float(start))
        return True

    @classmethod
    def from_state(cls, state: Mapping[str, Any], reference: Mapping[str, Any],
                   now_s: Callable[[], float] = time.time) -> DriftTracker:
        """A tracker with the saved settings and buckets (buckets dropped if the reference
        differs from the one they were counted under)."""
        tracker = cls(reference, method=state["method"], window_s=state["window_s"],
                      bucket_s=state["bucket_s"], min_samples=state["min_samples"], now_s=now_s)
        tracker.load_state(state)
        return tracker

    # -- internals --------------------------------------------------------------------------
    def _evict(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._buckets and self._buckets[0][0] + self.bucket_s <= cutoff:
            self._buckets.popleft()

    def _bucket(self, start: float) -> dict[str, np.ndarray]:
        if not self._buckets or self._buckets[-1][0] < start:
            self._buckets.append((start, {}))
            return self._buckets[-1][1]
        for bucket_start, counts in reversed(self._buckets):  # late arrival: bounded scan
            if bucket_start == start:
                return counts
        # a late batch whose bucket was never opened: insert it in time order
        items = sorted([*self._buckets, (start, {})], key=lambda b: b[0])
        self._buckets = deque(items)
        return next(c for s, c in self._buckets if s == start)

    def _totals(self) -> dict[str, np.ndarray]:
        self._evict(self.now_s())
        totals: dict[str, np.ndarray] = {}
        for _, counts in self._buckets:
            for name, vec in counts.items():
                if name in totals:
                    totals[name] = totals[name] + vec
                else:
                    totals[name] = vec.copy()
        return totals
