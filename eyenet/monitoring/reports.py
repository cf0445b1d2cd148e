"""Reports: latency, drift, alerts and anomalies over a time range, built by reading only.

A report merges the ``monitor_snapshot`` reports the monitor saved in range (each holds
its period's mergeable latency histogram, sums and counts) with, optionally, the
monitor's current unsaved period. Building one writes nothing: a ``GET /v1/report`` or an
``eyenet report`` may be repeated, polled or retried without adding reports or touching
alerts. Saving a report is its own call (:meth:`eyenet.monitoring.monitor.Monitor.save_report`,
or ``store.save_report(report)`` for one built here).

:func:`build_report` needs only an :class:`~eyenet.store.EventStore`, so a process without
the monitor (the API, the CLI without Ray) reports from the store without constructing a
:class:`~eyenet.monitoring.monitor.Monitor`, whose start-up recovers (and may rewrite)
open alerts.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np

from eyenet.monitoring.alerts import ALERT_KINDS
from eyenet.monitoring.latency import LatencyHistogram
from eyenet.store import EventStore

SNAPSHOT_KIND = "monitor_snapshot"
REPORT_KIND = "report"
QUERY_LIMIT = 100_000  # snapshots, and events per alert kind, read for one report


def build_report(store: EventStore, since_s: float, until_s: float | None = None,
                 now_s: float | None = None, current: dict[str, Any] | None = None,
                 model_version: int | None = None) -> dict[str, Any]:
    """Summarise ``[since_s, until_s)`` (``until_s`` None: up to ``now_s``) from the saved
    snapshots (whole snapshots, by their period end) plus ``current``, the unsaved period
    as a snapshot-shaped dict, when it ends inside the range. Reads only."""
    now = time.time() if now_s is None else now_s
    periods = store.list_reports(limit=QUERY_LIMIT, kind=SNAPSHOT_KIND, since=since_s, until=until_s)
    if current is not None and since_s <= now and (until_s is None or now < until_s):
        periods.append(current)
    hist, windows, anomalies = LatencyHistogram(), 0, Counter[str]()
    drift: dict[str, list[float]] = {}
    for p in periods:
        hist.merge(LatencyHistogram.from_dict(p["latency_histogram"]))
        windows += int(p.get("windows_scored", 0))
        anomalies.update({d: int(n) for d, n in p.get("anomalies_by_device", [])})
        for feature, score in (p.get("drift") or {}).items():
            if score is not None:
                drift.setdefault(feature, []).append(float(score))
    by_kind = {k: len(store.list_events(since=since_s, until=until_s, kind=k, limit=QUERY_LIMIT))
               for k in ALERT_KINDS}
    per_feature = {f: float(np.mean(v)) for f, v in sorted(drift.items())}
    overall = float(np.mean(list(per_feature.values()))) if per_feature else None
    end_s = now if until_s is None else until_s
    return {"kind": REPORT_KIND, "created_at": iso(now), "since": iso(since_s), "until": iso(end_s),
            "since_s": since_s, "until_s": end_s, "snapshots": len(periods),
            "latency": {"count": hist.count,
                        "avg_ms": hist.sum_ms / hist.count if hist.count else None,
                        "p50_ms": hist.quantile(0.5), "p95_ms": hist.quantile(0.95),
                        "p99_ms": hist.quantile(0.99)},
            "drift": {"per_feature": per_feature, "overall": overall},
            "alerts": {"count": sum(by_kind.values()), "by_kind": by_kind},
            "anomalies": sum(anomalies.values()),
            "anomalies_by_device": [{"device_id": d, "anomalies": n} for d, n in by_count(anomalies)],
            "windows_scored": windows, "model_version": model_version}


def by_count(counts: Counter[str]) -> list[tuple[str, int]]:
    """Most first; ties by name, so a report is the same on every read."""
    return sorted(counts.items(), key=lambda x: (-x[1], x[0]))


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()
