"""How well the demo's live phase went, measured against the incidents it injected.

Ray-free and store-free: it takes the ground truth (the injected incidents) and what the
system said (anomaly events and alerts, each reduced to a :class:`Span`), so unit tests
drive it with hand-made spans.

* **Event recall**: the share of incidents with at least one span on their device that
  overlaps ``[start, end + grace]`` (the grace lets an alert that is raised, or an episode
  that is still open, a little after the incident ends count).
* **Event precision**: the share of *anomaly events* (episodes, not monitor alerts, which
  are derived from them) that overlap some incident of their device, with the same grace.
* **False alerts on quiet devices**: spans of any kind on devices no incident touched.
* **Time to detect**: from an incident's start to the first anomalous point at or after it
  (the start of the first overlapping anomaly event, or the incident start when an episode
  was already open); alerts only count where no anomaly event overlapped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_GRACE_S = 15.0
ANOMALY_EVENT_KINDS = ("anomaly", "regime_change")  # live scoring's episodes
ALERT_EVENT_KINDS = ("device_anomaly",)  # the monitor's alerts about one device


@dataclass(frozen=True)
class Truth:
    """One injected incident: device, kind, ``[start_ms, end_ms]``."""

    device_id: str
    kind: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Span:
    """What the system said about a device over ``[start_ms, end_ms]``: an anomaly episode
    (``kind`` anomaly or regime_change) or an alert (``device_anomaly``)."""

    device_id: str
    kind: str
    start_ms: int
    end_ms: int
    event_id: str = ""
    metrics: tuple[str, ...] = ()

    @property
    def is_alert(self) -> bool:
        return self.kind in ALERT_EVENT_KINDS


def overlaps(span: Span, truth: Truth, grace_ms: int) -> bool:
    return (span.device_id == truth.device_id and span.start_ms <= truth.end_ms + grace_ms
            and span.end_ms >= truth.start_ms)


def span_of_event(event: Any, now_ms: int) -> Span | None:
    """A stored :class:`~eyenet.store.Event` as a span (None: not about one device, or not
    an anomaly event or device alert). Episodes carry ``start_ms``/``end_ms`` (a regime
    change ``adopted_ms``); alerts ``opened_at``..``resolved_at`` (still open: now)."""
    if event.device_id is None or event.kind not in (*ANOMALY_EVENT_KINDS, *ALERT_EVENT_KINDS):
        return None
    p = event.payload or {}
    if event.kind in ALERT_EVENT_KINDS:
        start = int(float(p.get("opened_at", event.ts.timestamp())) * 1000)
        end_s = p.get("resolved_at") or None
        end = int(float(end_s) * 1000) if end_s is not None else now_ms
    else:
        start = int(p.get("start_ms", event.ts.timestamp() * 1000))
        end = int(p.get("end_ms", p.get("adopted_ms", start)))
    return Span(str(event.device_id), event.kind, start, max(start, end), event.event_id,
                tuple(event.metrics or ()))


def score_demo(truths: Sequence[Truth], spans: Iterable[Span], devices: Sequence[str],
               grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
    """The demo's figures (see the module docstring); ``devices``: the whole fleet."""
    spans = list(spans)
    grace_ms = int(grace_s * 1000)
    incident_devices = {t.device_id for t in truths}
    quiet = [d for d in devices if d not in incident_devices]
    per_incident = []
    for t in truths:
        hits = [s for s in spans if overlaps(s, t, grace_ms)]
        events = [s for s in hits if not s.is_alert] or hits
        detect_ms = min((max(s.start_ms, t.start_ms) for s in events), default=None)
        per_incident.append({
            "device_id": t.device_id, "kind": t.kind, "start_ms": t.start_ms, "end_ms": t.end_ms,
            "found": bool(hits), "events": sum(not s.is_alert for s in hits),
            "alerts": sum(s.is_alert for s in hits),
            "time_to_detect_s": None if detect_ms is None else (detect_ms - t.start_ms) / 1000.0,
            "metrics": sorted({m for s in hits for m in s.metrics})})
    anomaly_events = [s for s in spans if not s.is_alert]
    true_events = [s for s in anomaly_events if any(overlaps(s, t, grace_ms) for t in truths)]
    false_quiet = [s for s in spans if s.device_id in set(quiet)]
    ttd = [r["time_to_detect_s"] for r in per_incident if r["time_to_detect_s"] is not None]
    return {
        "incidents": len(truths), "incidents_found": sum(r["found"] for r in per_incident),
        "event_recall": sum(r["found"] for r in per_incident) / len(truths) if truths else None,
        "anomaly_events": len(anomaly_events), "true_anomaly_events": len(true_events),
        "event_precision": len(true_events) / len(anomaly_events) if anomaly_events else None,
        "false_alerts_on_quiet_devices": len(false_quiet),
        "quiet_devices_alerting": sorted({s.device_id for s in false_quiet}),
        "false_alerts": [{"device_id": s.device_id, "kind": s.kind, "start_ms": s.start_ms,
                          "end_ms": s.end_ms, "metrics": list(s.metrics)} for s in false_quiet],
        "quiet_devices": len(quiet),
        "mean_time_to_detect_s": sum(ttd) / len(ttd) if ttd else None,
        "grace_s": grace_s, "per_incident": per_incident}


def truths_from(incidents: Iterable[Mapping[str, Any] | Any]) -> list[Truth]:
    """Ground truth from resolved simulator incidents (objects or their dicts)."""
    out = []
    for x in incidents:
        d = x if isinstance(x, Mapping) else x.to_dict()
        out.append(Truth(str(d["device_id"]), str(d["kind"]), int(d["start_ms"]), int(d["end_ms"])))
    return out
