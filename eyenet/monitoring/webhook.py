"""Alertmanager-compatible webhook delivery for alerts.

:func:`alertmanager_payload` renders one alert :class:`~eyenet.store.Event` as the JSON body
Alertmanager POSTs to webhook receivers, and :class:`WebhookSink` delivers it from a
background thread so a slow receiver never stalls the monitor. Both are re-exported by
:mod:`eyenet.monitoring.alerts`, which owns the alert lifecycle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import urllib.error
import urllib.request
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from eyenet.errors import ConfigError
from eyenet.store import Event

# What Alertmanager sends as ``endsAt`` while an alert is still firing (Go's zero time).
ZERO_TIME = "0001-01-01T00:00:00Z"

log = logging.getLogger(__name__)


def format_value(value: Any) -> str:
    """An alert's value or threshold for humans: 4 significant digits, ``-`` when missing."""
    return "-" if value is None else f"{value:.4g}"


def redact_url(url: str) -> str:
    """``url`` without its userinfo: user and password both, since a user name can be a token."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def rfc3339(epoch_s: float | None) -> str:
    """Epoch seconds as RFC 3339 UTC text; None as Alertmanager's zero time."""
    if epoch_s is None:
        return ZERO_TIME
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_payload(event: Event, receiver: str = "eyenet", external_url: str = "") -> dict[str, Any]:
    """The JSON body Alertmanager POSTs to webhook receivers (version 4), for one alert.

    Speaking Alertmanager's format means any receiver already written for it (chat relays,
    paging bridges) takes EyeNet alerts unchanged. The fingerprint hashes the labels, which
    stay fixed for the alert's life, so the firing and the resolved message match up.
    """
    p = event.payload
    status = "firing" if event.status == "open" else "resolved"
    labels = {"alertname": event.kind, "severity": event.severity,
              "subject": str(p.get("subject", "")), "source": "eyenet"}
    if event.device_id:
        labels["device_id"] = event.device_id
    if event.metrics:
        labels["metric"] = ",".join(event.metrics)
    description = (f"{event.kind} on {p.get('subject')}: value {format_value(p.get('value'))}, "
                   f"threshold {format_value(p.get('threshold'))}, seen {p.get('count')} time(s)")
    annotations = {"summary": event.message, "description": description, "alert_id": event.event_id}
    alert = {"status": status, "labels": labels, "annotations": annotations,
             "startsAt": rfc3339(p.get("opened_at")),
             "endsAt": ZERO_TIME if status == "firing" else rfc3339(p.get("resolved_at")),
             "generatorURL": external_url,
             "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="{event.kind}"}}', "truncatedAlerts": 0,
            "status": status, "receiver": receiver, "groupLabels": {"alertname": event.kind},
            "commonLabels": dict(labels), "commonAnnotations": dict(annotations),
            "externalURL": external_url, "alerts": [alert]}


class WebhookSink:
    """POSTs alerts to an Alertmanager-compatible webhook from a background daemon thread.

    ``notify`` only appends to a bounded queue: a hung receiver must never stall the monitor
    (and through it the scoring actors that report to it). When the queue is full the
    *oldest* message is dropped -- the newest state matters most -- and counted. A POST that
    fails with a connection error, timeout, 5xx or 429 is retried after ``backoff_s``, then
    2x, 4x ... up to ``max_retries`` times; another 4xx means the receiver rejects the body,
    so it is not retried. Userinfo in the URL is sent as basic auth and never logged.
    """

    def __init__(self, url: str, timeout_s: float = 5.0, max_retries: int = 5, backoff_s: float = 1.0,
                 queue_size: int = 1000, receiver: str = "eyenet", external_url: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook URL must be http(s)://HOST/..., got {redact_url(url)!r}",
                              "alerts.webhook_url", redact_url(url), "http(s)://HOST/PATH")
        self._headers = {"Content-Type": "application/json", "User-Agent": "eyenet-alerts"}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
        self._post_url = urlunsplit(parts)
        self.url = redact_url(url)
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.queue_size, self.receiver, self.external_url = max(1, queue_size), receiver, external_url
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._counts = {"delivered": 0, "failed": 0, "dropped": 0, "retries": 0}
        self._thread = threading.Thread(target=self._run, name="eyenet-webhook", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"WebhookSink({self.url!r})"

    def notify(self, event: Event) -> None:
        """Queue the alert for delivery; returns at once."""
        payload = alertmanager_payload(event, self.receiver, self.external_url)
        with self._cond:
            if self._closing:
                self._counts["dropped"] += 1
                return
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self._counts["dropped"] += 1
            self._queue.append(payload)
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        """delivered / failed (gave up) / dropped (queue full or closed) / retries / queued."""
        with self._cond:
            return {**self._counts, "queued": len(self._queue), "url": self.url}

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout_s``, then stop retrying and drop the rest."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            with self._cond:
                self._counts["dropped"] += len(self._queue)
                self._queue.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                payload = self._queue.popleft()
            try:
                ok = self._deliver(payload)
            except Exception:  # never let one bad message kill the delivery thread
                log.exception("webhook %s: unexpected delivery error", self.url)
                ok = False
            with self._cond:
                self._counts["delivered" if ok else "failed"] += 1

    def _deliver(self, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload).encode()
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._cond:
                    self._counts["retries"] += 1
                if self._abort.wait(self.backoff_s * 2 ** (attempt - 1)):
                    break
            retry, reason = self._post(body)
            if retry is None:
                return True
            if not retry:
                break
        log.warning("webhook %s: gave up on %s alert %s: %s", self.url, payload["status"],
                    payload["alerts"][0]["annotations"]["alert_id"], reason)
        return False

    def _post(self, body: bytes) -> tuple[bool | None, str]:
        """(None, "") on success, else (worth retrying, reason)."""
        request = urllib.request.Request(self._post_url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
            return None, ""
        except urllib.error.HTTPError as exc:
            return exc.code >= 500 or exc.code == 429, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:  # refused, unresolvable, timed out
            return True, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
