"""Prediction-latency aggregates for the monitor (re-exported by :mod:`eyenet.monitoring.monitor`).

:class:`LatencyWindow` keeps the raw latencies of a recent time window for live stats;
:class:`LatencyHistogram` has fixed bins, so histograms of any periods merge by adding counts;
:class:`LatencyBuckets` counts since start, never reset, what a Prometheus histogram exposes.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_LATENCY_POINTS = 100_000
# Upper bounds (seconds) of the exported scoring-latency histogram: Prometheus' usual
# spread, from a 1 ms single-window batch to a 10 s stalled one
SCORING_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                             5.0, 10.0)


class LatencyHistogram:
    """Fixed log-spaced latency bins, 0.1 ms .. 100 s, 10 per decade, plus under/overflow.

    Fixed edges make histograms from any period mergeable by adding counts, which is what
    lets a report compute p95 over a range no single process ever held in memory.
    """

    EDGES_MS = np.logspace(-1, 5, 61)

    def __init__(self, counts: list[int] | None = None, sum_ms: float = 0.0) -> None:
        self.counts = (np.zeros(len(self.EDGES_MS) + 1, dtype=np.int64) if counts is None
                       else np.asarray(counts, dtype=np.int64).copy())
        if self.counts.shape != (len(self.EDGES_MS) + 1,):
            raise ValueError(f"histogram needs {len(self.EDGES_MS) + 1} counts, got {self.counts.shape}")
        self.sum_ms = float(sum_ms)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def add(self, latency_ms: float | np.ndarray) -> None:
        values = np.atleast_1d(np.asarray(latency_ms, dtype=np.float64))
        np.add.at(self.counts, np.searchsorted(self.EDGES_MS, values, side="right"), 1)
        self.sum_ms += float(values.sum())

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        self.counts += other.counts
        self.sum_ms += other.sum_ms
        return self

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated geometrically inside its bin; None when empty."""
        n = self.count
        if n == 0:
            return None
        cum = np.cumsum(self.counts)
        rank = max(q * n, 1e-9)
        i = int(np.searchsorted(cum, rank, side="left"))
        if i == 0:
            return float(self.EDGES_MS[0])
        if i >= len(self.EDGES_MS):
            return float(self.EDGES_MS[-1])
        lo, hi = self.EDGES_MS[i - 1], self.EDGES_MS[i]
        frac = (rank - cum[i - 1]) / self.counts[i]
        return float(lo * (hi / lo) ** frac)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "sum_ms": self.sum_ms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        return cls(data["counts"], data.get("sum_ms", 0.0))


class LatencyWindow:
    """Prediction latencies of the last ``window_s`` (at most ``max_points``, oldest dropped)."""

    def __init__(self, window_s: float, now_s: Callable[[], float] = time.time,
                 max_points: int = MAX_LATENCY_POINTS) -> None:
        self.window_s = window_s
        self.now_s = now_s
        self._points: deque[tuple[float, float]] = deque(maxlen=max_points)

    def add(self, latency_ms: float, at_s: float | None = None) -> None:
        self._points.append((self.now_s() if at_s is None else at_s, float(latency_ms)))

    def stats(self) -> dict[str, Any]:
        cutoff = self.now_s() - self.window_s
        while self._points and self._points[0][0] < cutoff:
            self._points.popleft()
        if not self._points:
            return {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None}
        values = np.fromiter((v for _, v in self._points), dtype=np.float64, count=len(self._points))
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {"count": len(values), "mean_ms": float(values.mean()), "p50_ms": float(p50),
                "p95_ms": float(p95), "p99_ms": float(p99)}


class LatencyBuckets:
    """Latencies counted into fixed upper bounds since this object was made, never reset.

    The snapshot histogram above restarts every period, and its bins count ``edge <= v <
    next edge``; Prometheus needs counts that only grow (``rate()`` over them) with
    ``v <= le`` semantics, so this keeps its own. Values are seconds, as exported.
    """

    def __init__(self, bounds_s: tuple[float, ...] = SCORING_LATENCY_BUCKETS_S) -> None:
        self.bounds_s = tuple(sorted(float(b) for b in bounds_s))
        self.counts = [0] * (len(self.bounds_s) + 1)  # the last one: above every bound (+Inf)
        self.sum_s = 0.0

    def add(self, latency_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds_s, latency_s)] += 1  # first bound >= value
        self.sum_s += float(latency_s)

    def to_dict(self) -> dict[str, Any]:
        return {"bounds_s": list(self.bounds_s), "counts": list(self.counts), "sum_s": self.sum_s}
