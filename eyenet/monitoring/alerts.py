"""Alerts: one open alert per (kind, subject), persisted as events and sent to sinks.

An alert is an :class:`~eyenet.store.Event` whose ``kind`` is one of :data:`ALERT_KINDS`,
whose ``event_id`` is ``alert-{kind}-{subject}-{opened_ms}`` and whose ``payload`` holds
``subject``, ``opened_at``, ``last_seen_at``, ``resolved_at`` (epoch seconds), ``count``,
``value`` and ``threshold``. State changes are ``upsert_event`` calls of the same id, so the
store shows the alert's state and a restarted monitor can :meth:`recover` it.

Semantics (chosen so that a flapping condition is one alert, not a page storm):

* ``fire`` while the (kind, subject) alert is open is a *repeat*: count, last_seen_at and
  value are updated in memory every time, but written to the store at most once every
  :data:`REPEAT_SAVE_S` per alert (so a hot rule cannot flood the store); the opening, the
  resolution and :meth:`AlertManager.close` always write. Sinks are not notified again.
  Labels (severity, device, metrics) stay those of the opening, so the receiver sees one
  stable alert.
* ``clear`` is called by a rule whenever its condition does not hold. It resolves the alert
  only once the condition has been clear for ``resolve_after_s`` -- measured from the last
  ``fire`` (``last_seen_at``) -- and then notifies sinks with status ``resolved``.
* Cooldown: within ``cooldown_s`` after a resolution, ``fire`` for the same key opens
  nothing and notifies nobody; it is counted as suppressed.

Sinks: :class:`LogSink` (one log line) and :class:`WebhookSink` (Alertmanager's webhook
JSON, delivered by a background thread so a slow receiver never stalls the monitor). The
store is not a sink: the manager itself writes the changes.
The webhook and payload code lives in :mod:`eyenet.monitoring.webhook` and is re-exported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from eyenet.config import AlertConfig
from eyenet.errors import EyeNetError
from eyenet.monitoring.webhook import (
    ZERO_TIME,
    WebhookSink,
    alertmanager_payload,
    format_value,
    redact_url,
    rfc3339,
)
from eyenet.store import Event, EventStore

__all__ = ["ALERT_KINDS", "REPEAT_SAVE_S", "ZERO_TIME", "AlertManager", "AlertSink", "LogSink",
           "WebhookSink", "alertmanager_payload", "build_sinks", "redact_url", "rfc3339"]

ALERT_KINDS = ("latency", "drift", "device_anomaly")
# Recovery reads at most this many events per kind and status (newest first).
RECOVER_LIMIT = 10_000
_PRUNE_AT = 1024
# A repeat of an open alert is written to the store at most this often (injected-clock seconds).
REPEAT_SAVE_S = 10.0

log = logging.getLogger(__name__)


class AlertSink(Protocol):
    """Where opened and resolved alerts go. ``notify`` must not block for long."""

    def notify(self, event: Event) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...


class LogSink:
    """One log line per change, naming kind, device, metrics and value (the seed's alert log)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    def notify(self, event: Event) -> None:
        p = event.payload
        level = logging.WARNING if event.status == "open" else logging.INFO
        self.logger.log(level, "alert %s %s: subject=%s device=%s metrics=%s value=%s threshold=%s "
                        "count=%s: %s", event.kind, "FIRING" if event.status == "open" else "RESOLVED",
                        p.get("subject"), event.device_id or "-", ",".join(event.metrics) or "-",
                        format_value(p.get("value")), format_value(p.get("threshold")), p.get("count"),
                        event.message)

    def close(self, timeout_s: float = 5.0) -> None:
        return None


def build_sinks(config: AlertConfig) -> list[AlertSink]:
    """The sinks the config asks for: always a log line, plus the webhook when a URL is set.

    Build them in the process that uses them (the webhook owns a thread, so it cannot be
    pickled to another process).
    """
    sinks: list[AlertSink] = [LogSink()]
    if config.webhook_url:
        sinks.append(WebhookSink(config.webhook_url, timeout_s=config.webhook_timeout_s,
                                 max_retries=config.webhook_max_retries,
                                 backoff_s=config.webhook_backoff_s))
    return sinks


class AlertManager:
    """Deduplicates, cools down, persists and dispatches alerts. Not thread-safe: the monitor
    owning it serialises calls."""

    def __init__(self, store: EventStore, config: AlertConfig, sinks: Iterable[AlertSink] | None = None,
                 now_s: Callable[[], float] = time.time,
                 kinds: tuple[str, ...] = ALERT_KINDS) -> None:
        self.store = store
        self.config = config
        self.sinks: list[AlertSink] = list(sinks) if sinks is not None else [LogSink()]
        self.now_s = now_s
        self.kinds = kinds
        self._open: dict[tuple[str, str], Event] = {}
        self._resolved_at: dict[tuple[str, str], float] = {}
        # When each open alert was last written, and which hold changes not yet written.
        self._saved_at: dict[tuple[str, str], float] = {}
        self._unsaved: set[tuple[str, str]] = set()
        # resolutions (and retirements) a store outage kept out of the store, by event id
        self._unwritten: dict[str, Event] = {}
        self.counts = {"opened": 0, "repeats": 0, "resolved": 0, "suppressed": 0,
                       "sink_errors": 0, "store_errors": 0}

    def fire(self, kind: str, subject: str, message: str, severity: str = "warning",
             metrics: list[str] | None = None, value: float | None = None,
             threshold: float | None = None, device_id: str | None = None) -> Event | None:
        """Report that the condition ``(kind, subject)`` holds now.

        Returns the new alert when this call opened one (sinks notified); None for a
        repeat of an open alert or a fire suppressed by the cooldown.
        """
        if kind not in self.kinds:
            raise ValueError(f"alert kind must be one of {self.kinds}, got {kind!r}")
        now = self.now_s()
        key = (kind, str(subject))
        event = self._open.get(key)
        if event is not None:
            event.payload.update(last_seen_at=now, count=int(event.payload.get("count", 0)) + 1,
                                 value=_num(value), last_message=message,
                                 last_metrics=list(metrics or []))
            self.counts["repeats"] += 1
            saved_at = self._saved_at.get(key)
            if saved_at is not None and 0.0 <= now - saved_at < REPEAT_SAVE_S:
                self._unsaved.add(key)  # written by a later repeat, the resolution or close()
            else:
                self._save_open(key, event, now)
            return None
        resolved_at = self._resolved_at.get(key)
        if resolved_at is not None:
            if now - resolved_at < self.config.cooldown_s:
                self.counts["suppressed"] += 1
                return None
            del self._resolved_at[key]
        event = Event(kind=kind, message=message, severity=severity, device_id=device_id,
                      metrics=list(metrics or []), ts=datetime.fromtimestamp(now, UTC), status="open",
                      payload={"subject": key[1], "opened_at": now, "last_seen_at": now,
                               "resolved_at": None, "count": 1, "value": _num(value),
                               "threshold": _num(threshold)},
                      event_id=f"alert-{kind}-{key[1]}-{round(now * 1000)}")
        self._open[key] = event
        self.counts["opened"] += 1
        self._save_open(key, event, now)
        self._notify(event)
        return event

    def clear(self, kind: str, subject: str) -> Event | None:
        """Report that the condition does not hold now. Resolves (and returns) the open alert
        once it has not fired for ``resolve_after_s``; otherwise returns None."""
        key = (kind, str(subject))
        event = self._open.get(key)
        if event is None:
            return None
        now = self.now_s()
        if now - float(event.payload.get("last_seen_at", 0.0)) < self.config.resolve_after_s:
            return None
        return self._resolve(key, now)

    def get(self, kind: str, subject: str) -> Event | None:
        """The open alert for this key (a copy), or None."""
        event = self._open.get((kind, str(subject)))
        return _copy(event) if event is not None else None

    def open_alerts(self, kind: str | None = None) -> list[Event]:
        """Copies of the open alerts, oldest first."""
        events = [e for (k, _), e in self._open.items() if kind is None or k == kind]
        return [_copy(e) for e in sorted(events, key=lambda e: e.payload.get("opened_at", 0.0))]

    def open_subjects(self, kind: str) -> list[str]:
        return [s for (k, s) in self._open if k == kind]

    def recover(self) -> int:
        """Reload open alerts (and recent resolutions, for the cooldown) from the store.

        Recovered alerts are not notified again: the receivers saw them fire before the
        restart. Returns how many open alerts were recovered.
        """
        now = self.now_s()
        for kind in self.kinds:
            for event in self.store.list_events(kind=kind, status="open", limit=RECOVER_LIMIT):
                subject = event.payload.get("subject")
                if subject is None:
                    continue
                key = (kind, str(subject))
                held = self._open.get(key)
                if held is None or _opened(event) > _opened(held):
                    if held is not None:
                        self._retire(held, now)
                        self._forget(key)
                    self._open[key] = event
                elif held.event_id != event.event_id:
                    self._retire(event, now)  # an older duplicate left by a crash
            for event in self.store.list_events(kind=kind, status="resolved", limit=RECOVER_LIMIT):
                subject, resolved_at = event.payload.get("subject"), event.payload.get("resolved_at")
                if subject is None or resolved_at is None:
                    continue
                key = (kind, str(subject))
                if now - float(resolved_at) < self.config.cooldown_s and key not in self._open:
                    self._resolved_at[key] = max(float(resolved_at), self._resolved_at.get(key, 0.0))
        return len(self._open)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "open": len(self._open), "cooling_down": len(self._resolved_at),
                "unwritten": len(self._unwritten) + len(self._unsaved)}

    def flush(self) -> int:
        """Write the open alerts whose repeats the throttle (or a failed write) held back and
        the resolutions a failed write kept out of the store; returns how many were tried.
        The monitor calls it at every check, so an outage's alerts reach the store within a
        check of its end (a monitor that died first would lose them)."""
        keys = [k for k in self._unsaved if k in self._open]
        for key in keys:
            self._save_open(key, self._open[key], self.now_s())
        pending = list(self._unwritten.values())
        for event in pending:
            if self._save(event):
                self._unwritten.pop(event.event_id, None)
        return len(keys) + len(pending)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write held-back repeats, then close every sink (the webhook drains its queue for up
        to ``timeout_s``)."""
        self.flush()
        for sink in self.sinks:
            try:
                sink.close(timeout_s)
            except Exception:
                log.exception("closing alert sink %s failed", type(sink).__name__)

    # -- internals --------------------------------------------------------------------------
    def _resolve(self, key: tuple[str, str], now: float) -> Event:
        event = self._open.pop(key)
        self._forget(key)
        event.status = "resolved"
        event.payload["resolved_at"] = now
        self._resolved_at[key] = now
        self.counts["resolved"] += 1
        self._save(event)
        self._notify(event)
        if len(self._resolved_at) > _PRUNE_AT:
            self._resolved_at = {k: t for k, t in self._resolved_at.items()
                                 if now - t < self.config.cooldown_s}
        return _copy(event)

    def _retire(self, event: Event, now: float) -> None:
        event.status = "resolved"
        event.payload["resolved_at"] = now
        event.payload["superseded"] = True
        self._save(event)

    def _save(self, event: Event) -> bool:
        # A store outage must not stop alerting: the in-memory state stays right, the sinks
        # are still told, and the write is tried again (the next change of an open alert, or
        # flush() for one no longer open).
        try:
            self.store.upsert_event(event)
        except EyeNetError as exc:
            self.counts["store_errors"] += 1
            log.warning("could not save alert %s: %s", event.event_id, exc)
            if event.status != "open":
                self._unwritten[event.event_id] = _copy(event)
            return False
        self._unwritten.pop(event.event_id, None)
        return True

    def _save_open(self, key: tuple[str, str], event: Event, now: float) -> None:
        """Write an open alert and note when; a failed write leaves it for the next change."""
        if self._save(event):
            self._saved_at[key] = now
            self._unsaved.discard(key)
        else:
            self._unsaved.add(key)

    def _forget(self, key: tuple[str, str]) -> None:
        self._saved_at.pop(key, None)
        self._unsaved.discard(key)

    def _notify(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.notify(_copy(event))
            except Exception:
                self.counts["sink_errors"] += 1
                log.exception("alert sink %s failed on %s", type(sink).__name__, event.event_id)


def _copy(event: Event) -> Event:
    """Sinks and callers get a snapshot: the manager keeps mutating its open alerts."""
    return replace(event, metrics=list(event.metrics), payload=dict(event.payload))


def _opened(event: Event) -> float:
    return float(event.payload.get("opened_at") or 0.0)


def _num(value: Any) -> float | None:
    """A finite float or None: the stores keep JSON, which has no NaN."""
    if value is None:
        return None
    v = float(value)
    return v if v == v and abs(v) != float("inf") else None

