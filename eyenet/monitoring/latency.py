"""Prediction-latency aggregates for the monitor (re-exported by :mod:`eyenet.monitoring.monitor`).

:class:`LatencyWindow` keeps the raw latencies of a recent time window for live stats;
:class:`LatencyHistogram` has fixed bins, so histograms of any periods merge by adding counts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_LATENCY_POINTS = 100_000


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
