"""The monitor's core: latency, anomaly rates, drift, alert rules, snapshots and reports.

Ray-free so unit tests drive it with an injected clock; ``actors/`` wraps it in the named
singleton actor. Scoring actors send one small :class:`ScoreSummary` per batch (never raw
values), and every window the monitor keeps is bounded in time *and* size, so a busy fleet
cannot grow its memory.

Reports cover any time range without keeping history in memory: every
``snapshot_interval_s`` the monitor saves a ``monitor_snapshot`` report holding that
period's mergeable latency histogram, sums and counts; :meth:`Monitor.report` merges the
snapshots in range (plus the current unsaved period) and writes nothing, and
:meth:`Monitor.save_report` also saves the result. Percentiles come from the merged
histogram, so they are exact to its bin resolution (about +-12%).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eyenet.config import EyeNetConfig
from eyenet.errors import EyeNetError
from eyenet.monitoring.alerts import AlertManager, AlertSink, build_sinks
from eyenet.monitoring.drift import DriftTracker
from eyenet.monitoring.latency import MAX_LATENCY_POINTS, LatencyBuckets, LatencyHistogram, LatencyWindow
from eyenet.monitoring.reports import SNAPSHOT_KIND, build_report, by_count, iso
from eyenet.store import Event, Store

__all__ = ["DEVICE_STATES", "MAX_LATENCY_POINTS", "LatencyHistogram", "LatencyWindow", "Monitor",
           "ScoreSummary"]

log = logging.getLogger(__name__)

STATE_KEY = "monitor"
MAX_POINTS_PER_DEVICE = 1_000  # anomalous points kept per device (>= anomaly_min_points)
RATE_BUCKETS = 30              # granularity of the per-device anomaly-rate window
TOP_METRICS = 3
MAX_DEVICES = 100_000          # devices the metrics table keeps (the least recently scored go first)
DEVICE_STATES = ("learning", "judged", "anomalous")  # anomalous: judged, with an open device alert


@dataclass
class ScoreSummary:
    """What a scoring actor sends the monitor per batch: small, plain and picklable.

    ``anomalies`` holds ``(device_id, ts_ms, score, metrics)`` with the metrics that drove
    each point, most first; ``feature_counts`` is :func:`eyenet.monitoring.drift.bin_counts` as lists.
    """

    sent_at_s: float
    latency_ms: float
    n_windows: int
    device_counts: dict[str, int] = field(default_factory=dict)
    anomalies: list[tuple[str, int, float, list[str]]] = field(default_factory=list)
    feature_counts: dict[str, list[int]] = field(default_factory=dict)
    model_version: int | None = None
    # devices of the batch scored as learning (never seen in training, still learning
    # their scale) and devices judged: the monitor shows which devices are learning
    learning_devices: list[str] = field(default_factory=list)
    judged_devices: list[str] = field(default_factory=list)
    # each device's newest score (0..1) and its threshold, for /metrics; empty if not sent
    scores: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Device:
    """A device as /metrics shows it: when last scored, its newest score, cumulative counts."""

    seen_s: float
    scored: int = 0
    anomalies: int = 0
    score: float | None = None
    threshold: float | None = None


@dataclass
class _Period:
    """Counts since the last snapshot."""

    start_s: float
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    windows: int = 0
    summaries: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    alerts_opened: int = 0


class Monitor:
    """Latency, anomaly-rate and drift monitoring with the seed's alert rules.

    The owner calls :meth:`record` per summary, :meth:`check` every ``check_interval_s``
    and :meth:`maybe_snapshot` regularly. Windows run on the monitor's own clock (arrival
    time), so replayed history is judged when it is scored, not when it happened. Methods
    take a lock, so a threaded actor may call them concurrently.
    """

    def __init__(self, config: EyeNetConfig, store: Store, reference: dict[str, Any] | None,
                 model_version: int | None = None, sinks: list[AlertSink] | None = None,
                 now_s: Callable[[], float] = time.time) -> None:
        self.config, self.store, self.now_s = config, store, now_s
        self.model_version = model_version
        self._lock = threading.RLock()
        self.latency = LatencyWindow(config.monitor.latency_window_s, now_s)
        self.drift = self._tracker(reference or {})
        self.alerts = AlertManager(store, config.alerts,
                                   build_sinks(config.alerts) if sinks is None else sinks, now_s)
        self._points: dict[str, deque[tuple[float, tuple[str, ...]]]] = {}
        self._rates: deque[tuple[float, Counter[str], Counter[str]]] = deque()
        self._rate_bucket_s = config.monitor.latency_window_s / RATE_BUCKETS
        self._period = _Period(now_s())
        self.counts = {"summaries": 0, "windows_scored": 0, "anomalies": 0, "drift_skipped": 0,
                       "bad_latency": 0}
        self.learning: dict[str, float] = {}  # device -> when last seen learning
        self.devices: dict[str, _Device] = {}  # in order of last scoring, oldest first
        self.latency_buckets = LatencyBuckets()
        self.restored_drift = self._restore(store.get_state(STATE_KEY) or {})
        self.alerts.recover()

    # -- input ----------------------------------------------------------------------------
    def record(self, summary: ScoreSummary) -> None:
        """Fold one scored batch into every window and the current snapshot period."""
        with self._lock:
            now = self.now_s()
            self.counts["summaries"] += 1
            self._period.summaries += 1
            lat = float(summary.latency_ms)
            if np.isfinite(lat) and lat >= 0:
                self.latency.add(lat, now)
                self._period.hist.add(lat)
                self.latency_buckets.add(lat / 1000.0)
            else:
                self.counts["bad_latency"] += 1
            self.counts["windows_scored"] += int(summary.n_windows)
            self._period.windows += int(summary.n_windows)
            scored, anomalous = self._rate_bucket(now)
            scored.update({str(d): int(n) for d, n in summary.device_counts.items()})
            for device, n in summary.device_counts.items():
                self._device(str(device), now).scored += int(n)
            for device, score in summary.scores.items():
                row = self._device(str(device), now)
                threshold = summary.thresholds.get(device)
                row.score, row.threshold = float(score), None if threshold is None else float(threshold)
            for device in summary.judged_devices:
                self.learning.pop(str(device), None)
            for device in summary.learning_devices:
                self.learning[str(device)] = now
            cap = max(MAX_POINTS_PER_DEVICE, self.config.alerts.anomaly_min_points)
            for device_id, _ts_ms, _score, metrics in summary.anomalies:
                device_id = str(device_id)
                anomalous[device_id] += 1
                self._period.anomalies[device_id] += 1
                self._device(device_id, now).anomalies += 1
                points = self._points.setdefault(device_id, deque(maxlen=cap))
                points.append((now, tuple(metrics[:TOP_METRICS])))
            self.counts["anomalies"] += len(summary.anomalies)
            if summary.feature_counts:
                stale = (summary.model_version is not None and self.model_version is not None
                         and summary.model_version != self.model_version)
                if stale:  # counted in another model's bins: meaningless against this reference
                    self.counts["drift_skipped"] += 1
                else:
                    self.drift.add(summary.feature_counts, now)

    # -- rules ----------------------------------------------------------------------------
    def check(self) -> list[Event]:
        """Evaluate the alert rules; returns the alerts this call opened or resolved."""
        with self._lock:
            a = self.config.alerts
            events: list[Event] = []
            lat = self.latency.stats()
            firing: set[str] = set()
            if lat["count"] and lat["mean_ms"] > a.latency_avg_ms:
                firing.add("fleet")
                self._fire(events, "latency", "fleet",
                           f"mean prediction latency {lat['mean_ms']:.1f} ms over the last "
                           f"{self.config.monitor.latency_window_s:g} s exceeds {a.latency_avg_ms:g} ms",
                           "warning", [], lat["mean_ms"], a.latency_avg_ms)
            self._clear_others(events, "latency", firing)
            firing = set()
            for feature, score in self.drift.scores().items():
                if score is not None and score > a.drift_threshold:
                    firing.add(feature)
                    self._fire(events, "drift", feature,
                               f"feature {feature} drifted from the training reference: "
                               f"{self.drift.method} {score:.3f} > {a.drift_threshold:g}",
                               "warning", [feature], score, a.drift_threshold)
            self._clear_others(events, "drift", firing)
            firing = set()
            for device_id, points in self._recent_points().items():
                if len(points) >= a.anomaly_min_points:
                    firing.add(device_id)
                    metrics = _top_metrics(points)
                    self._fire(events, "device_anomaly", device_id,
                               f"device {device_id}: {len(points)} anomalous points in the last "
                               f"{a.anomaly_window_s:g} s, driven by {', '.join(metrics) or 'unknown'}",
                               "critical", metrics, float(len(points)), float(a.anomaly_min_points),
                               device_id=device_id)
            self._clear_others(events, "device_anomaly", firing)
            self.alerts.flush()   # what a store outage kept out of the store, now it may be back
            return events

    # -- views ----------------------------------------------------------------------------
    def stats(self, top_n: int = 50) -> dict[str, Any]:
        """Live view: latency, per-device anomaly rates (top ``top_n``), drift, open alerts."""
        with self._lock:
            scored, anomalous = Counter[str](), Counter[str]()
            for _, s, an in self._evicted_rates():
                scored.update(s)
                anomalous.update(an)
            rates = [{"device_id": d, "scored": scored[d], "anomalies": anomalous[d],
                      "rate": anomalous[d] / scored[d] if scored[d] else None}
                     for d in set(scored) | set(anomalous)]
            rates.sort(key=lambda r: (-(r["rate"] or 0.0), -r["anomalies"], r["device_id"]))
            total_scored, total_anom = sum(scored.values()), sum(anomalous.values())
            return {"latency": self.latency.stats(), "anomaly_rate": rates[:top_n],
                    "anomaly_rate_total": {"devices": len(rates), "scored": total_scored,
                                           "anomalies": total_anom,
                                           "rate": total_anom / total_scored if total_scored else None},
                    "drift": self.drift.scores(), "drift_method": self.drift.method,
                    "drift_samples": self.drift.sample_counts(),
                    "open_alerts": [_event_dict(e) for e in self.alerts.open_alerts()],
                    "alerts": self.alerts.stats(), "sinks": _sink_stats(self.alerts.sinks),
                    "counts": dict(self.counts), "model_version": self.model_version,
                    "learning_devices": {"count": len(self.learning),
                                         "devices": sorted(self.learning)[:top_n]}}

    def metrics(self) -> dict[str, Any]:
        """What /metrics exports (:mod:`eyenet.monitoring.exporter`) as plain data: each device's
        state, newest score, threshold and counts, latency buckets, drift, open alerts by kind.
        Counts live as long as the monitor (Prometheus reads its restart as a counter reset)."""
        with self._lock:
            anomalous = set(self.alerts.open_subjects("device_anomaly"))
            open_alerts = Counter(e.kind for e in self.alerts.open_alerts())
            devices = [{"device_id": d, "scored": r.scored, "anomalies": r.anomalies, "score": r.score,
                        "threshold": r.threshold, "last_scored_s": r.seen_s,
                        "state": ("anomalous" if d in anomalous else
                                  "learning" if d in self.learning else "judged")}
                       for d, r in self.devices.items()]
            return {"devices": devices, "latency_buckets": self.latency_buckets.to_dict(),
                    "drift": self.drift.scores(), "drift_method": self.drift.method,
                    "drift_threshold": self.config.alerts.drift_threshold,
                    "open_alerts": {k: open_alerts[k] for k in (*self.alerts.kinds, *open_alerts)},
                    "model_version": self.model_version, "counts": dict(self.counts)}

    def set_reference(self, reference: dict[str, Any] | None, model_version: int | None) -> None:
        """A new production model: drift restarts against its reference (old bins are moot)."""
        with self._lock:
            self.drift = self._tracker(reference or {})
            self.model_version = model_version

    # -- snapshots and reports ------------------------------------------------------------------
    def maybe_snapshot(self) -> dict[str, Any] | None:
        """Snapshot when ``snapshot_interval_s`` has passed; a store failure is logged and the
        period kept, so the next call saves it."""
        with self._lock:
            if self.now_s() - self._period.start_s < self.config.monitor.snapshot_interval_s:
                return None
            try:
                return self.snapshot()
            except EyeNetError as exc:
                log.warning("monitor snapshot not saved (will retry): %s", exc)
                return None

    def snapshot(self) -> dict[str, Any]:
        """Save the current period as a ``monitor_snapshot`` report and the resumable state."""
        with self._lock:
            now = self.now_s()
            report = self._period_report(self._period, now)
            report["report_id"] = self.store.save_report(report)
            self._period = _Period(now)
            self.store.put_state(STATE_KEY, self._state())
            return report

    def report(self, since_s: float, until_s: float | None = None) -> dict[str, Any]:
        """Summarise ``[since_s, until_s)`` from saved snapshots (whole snapshots, by their
        period end) plus the unsaved current period. Reads only: a report may be asked for
        as often as a caller likes; :meth:`save_report` is the call that saves one."""
        with self._lock:
            now = self.now_s()
            current = self._period_report(self._period, now) if self._period.summaries else None
            return build_report(self.store, since_s, until_s, now, current, self.model_version)

    def save_report(self, since_s: float, until_s: float | None = None) -> dict[str, Any]:
        """:meth:`report`, saved in the store as a ``report``; returned with its ``report_id``."""
        with self._lock:
            report = self.report(since_s, until_s)
            report["report_id"] = self.store.save_report(report)
            return report

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain and close the alert sinks (the webhook's delivery thread)."""
        self.alerts.close(timeout_s)

    # -- internals --------------------------------------------------------------------------
    def _tracker(self, reference: dict[str, Any]) -> DriftTracker:
        m = self.config.monitor
        return DriftTracker(reference, m.drift_method, m.drift_window_s, m.drift_bucket_s,
                            m.min_drift_samples, self.now_s)

    def _fire(self, events: list[Event], kind: str, subject: str, message: str, severity: str,
              metrics: list[str], value: float, threshold: float, device_id: str | None = None) -> None:
        event = self.alerts.fire(kind, subject, message, severity, metrics, value, threshold, device_id)
        if event is not None:
            events.append(event)
            self._period.alerts_opened += 1

    def _clear_others(self, events: list[Event], kind: str, firing: set[str]) -> None:
        for subject in self.alerts.open_subjects(kind):
            if subject not in firing:
                event = self.alerts.clear(kind, subject)
                if event is not None:
                    events.append(event)

    def _device(self, device_id: str, now: float) -> _Device:
        """The device's row, moved to the newest end; the oldest row goes past MAX_DEVICES."""
        row = self.devices[device_id] = self.devices.pop(device_id, None) or _Device(now)
        row.seen_s = now
        if len(self.devices) > MAX_DEVICES:
            del self.devices[next(iter(self.devices))]
        return row

    def _recent_points(self) -> dict[str, deque[tuple[float, tuple[str, ...]]]]:
        cutoff = self.now_s() - self.config.alerts.anomaly_window_s
        for device_id in list(self._points):
            points = self._points[device_id]
            while points and points[0][0] < cutoff:
                points.popleft()
            if not points:
                del self._points[device_id]  # devices come and go: keep only active ones
        return self._points

    def _rate_bucket(self, now: float) -> tuple[Counter[str], Counter[str]]:
        start = now - now % self._rate_bucket_s
        if not self._rates or self._rates[-1][0] < start:
            self._rates.append((start, Counter(), Counter()))
        return self._rates[-1][1], self._rates[-1][2]

    def _evicted_rates(self) -> deque[tuple[float, Counter[str], Counter[str]]]:
        cutoff = self.now_s() - self.config.monitor.latency_window_s
        while self._rates and self._rates[0][0] + self._rate_bucket_s <= cutoff:
            self._rates.popleft()
        return self._rates

    def _period_report(self, p: _Period, now: float) -> dict[str, Any]:
        return {"kind": SNAPSHOT_KIND, "created_at": iso(now), "period_start": iso(p.start_s),
                "period_end": iso(now), "period_start_s": p.start_s, "period_end_s": now,
                "latency_histogram": p.hist.to_dict(), "latency_sum_ms": p.hist.sum_ms,
                "latency_count": p.hist.count, "drift": self.drift.scores(),
                "drift_method": self.drift.method, "windows_scored": p.windows,
                "summaries": p.summaries, "anomalies": sum(p.anomalies.values()),
                "anomalies_by_device": [list(x) for x in by_count(p.anomalies)],
                "alerts_opened": p.alerts_opened, "model_version": self.model_version}

    def _state(self) -> dict[str, Any]:
        """What a restarted monitor needs to resume: drift buckets and anomaly windows. Device
        ids are values in lists, never keys (they may hold characters Mongo keys cannot)."""
        return {"version": 1, "saved_at": self.now_s(), "model_version": self.model_version,
                "drift": self.drift.to_state(),
                "points": [[d, [[t, list(m)] for t, m in pts]] for d, pts in self._recent_points().items()],
                "rates": [[start, [[d, s[d], a[d]] for d in set(s) | set(a)]]
                          for start, s, a in self._evicted_rates()]}

    def _restore(self, state: dict[str, Any]) -> bool:
        if state.get("version") != 1:
            return False
        cap = max(MAX_POINTS_PER_DEVICE, self.config.alerts.anomaly_min_points)
        for device_id, pts in state.get("points", []):
            self._points[device_id] = deque(((float(t), tuple(m)) for t, m in pts), maxlen=cap)
        for start, rows in state.get("rates", []):
            self._rates.append((float(start), Counter({d: int(s) for d, s, _ in rows}),
                                Counter({d: int(a) for d, _, a in rows if a})))
        self._recent_points()
        self._evicted_rates()
        return self.drift.load_state(state.get("drift") or {})


def _top_metrics(points: deque[tuple[float, tuple[str, ...]]]) -> list[str]:
    """Metrics ranked by how often each was a point's top driver (ties: how often named)."""
    top = Counter(m[0] for _, m in points if m)
    named = Counter(x for _, m in points for x in m)
    ranked = sorted(top, key=lambda x: (-top[x], -named[x], x))
    return ranked[:TOP_METRICS]


def _event_dict(event: Event) -> dict[str, Any]:
    data = event.to_dict()
    data["ts"] = event.ts.isoformat()
    return data


def _sink_stats(sinks: list[AlertSink]) -> dict[str, Any]:
    return {type(s).__name__: s.stats() for s in sinks if hasattr(s, "stats")}
