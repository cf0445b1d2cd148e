"""AlertManager (dedup, resolution, cooldown, recovery, persistence) and its sinks, with a
real local HTTP receiver for the webhook. No fixed sleeps: clocks are injected and the
webhook tests poll with a deadline."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from eyenet.config import AlertConfig
from eyenet.errors import ConfigError, StoreError
from eyenet.monitoring.alerts import (
    REPEAT_SAVE_S,
    ZERO_TIME,
    AlertManager,
    LogSink,
    WebhookSink,
    alertmanager_payload,
    build_sinks,
    redact_url,
)
from eyenet.store import Event
from tests.helpers import Clock, ListSink

T0 = 1_700_000_000.0


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        threading.Event().wait(0.005)


def _config(**kw: Any) -> AlertConfig:
    return AlertConfig(**{"cooldown_s": 300.0, "resolve_after_s": 60.0, **kw})


def _fire_latency(manager: AlertManager, value: float = 150.0) -> Event | None:
    return manager.fire("latency", "fleet", "mean latency high", "warning", [], value, 100.0)


def test_repeats_while_open_are_one_alert(store) -> None:
    clock, sink = Clock(T0), ListSink()
    manager = AlertManager(store, _config(), [sink], clock)
    first = _fire_latency(manager)
    assert first is not None and first.event_id == f"alert-latency-fleet-{round(T0 * 1000)}"
    for i in range(9):
        clock.t += 1
        assert _fire_latency(manager, 150.0 + i) is None
    assert len(sink.events) == 1 and sink.events[0].status == "open"
    [alert] = manager.open_alerts()
    assert alert.payload["count"] == 10 and alert.payload["last_seen_at"] == T0 + 9
    [stored] = store.list_events(kind="latency")
    assert stored.event_id == first.event_id and stored.status == "open"
    assert stored.payload["count"] == 1  # repeats within REPEAT_SAVE_S are held back
    assert manager.flush() == 1
    [stored] = store.list_events(kind="latency")
    assert stored.payload["count"] == 10 and stored.payload["value"] == 158.0
    assert stored.payload["threshold"] == 100.0 and stored.payload["opened_at"] == T0
    assert manager.stats()["repeats"] == 9
    assert manager.flush() == 0


def test_repeat_store_writes_are_throttled_and_resolution_writes_the_final_state(
        store, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, sink = Clock(T0), ListSink()
    writes: list[tuple[str, str, int]] = []
    upsert = store.upsert_event

    def spy(event: Event) -> str:
        writes.append((event.event_id, event.status, event.payload["count"]))
        return upsert(event)

    monkeypatch.setattr(store, "upsert_event", spy)
    manager = AlertManager(store, _config(resolve_after_s=60.0), [sink], clock)
    first = _fire_latency(manager)
    assert first is not None
    for i in range(100):
        clock.t = T0 + (i + 1) * (REPEAT_SAVE_S - 0.01) / 100  # 100 repeats, all within 10 s
        assert _fire_latency(manager, 150.0 + i) is None
    assert clock.t - T0 < REPEAT_SAVE_S
    assert len([w for w in writes if w[0] == first.event_id]) <= 2
    alert = manager.get("latency", "fleet")
    assert alert is not None and alert.payload["count"] == 101 and alert.payload["value"] == 249.0
    assert len(sink.events) == 1

    clock.t += 60
    resolved = manager.clear("latency", "fleet")
    assert resolved is not None and resolved.payload["count"] == 101
    assert writes[-1] == (first.event_id, "resolved", 101)
    [stored] = store.list_events(kind="latency")
    assert stored.event_id == first.event_id and stored.status == "resolved"
    assert stored.payload["count"] == 101 and stored.payload["last_seen_at"] == alert.payload["last_seen_at"]
    assert stored.payload["resolved_at"] == clock.t


def test_clear_resolves_once_clear_for_resolve_after_s(store) -> None:
    clock, sink = Clock(T0), ListSink()
    manager = AlertManager(store, _config(resolve_after_s=60.0), [sink], clock)
    opened = manager.fire("device_anomaly", "r1", "r1 anomalous", "critical", ["latency"], 5, 3,
                          device_id="r1")
    clock.t += 30
    assert manager.clear("device_anomaly", "r1") is None  # clear for 30 s only
    assert manager.get("device_anomaly", "r1") is not None
    clock.t += 30
    resolved = manager.clear("device_anomaly", "r1")
    assert resolved is not None and resolved.status == "resolved"
    assert resolved.event_id == opened.event_id and resolved.payload["resolved_at"] == T0 + 60
    assert [e.status for e in sink.events] == ["open", "resolved"]
    assert manager.open_alerts() == [] and manager.clear("device_anomaly", "r1") is None
    [stored] = store.list_events(kind="device_anomaly")
    assert stored.status == "resolved" and stored.device_id == "r1" and stored.metrics == ["latency"]
    assert store.list_events(kind="device_anomaly", status="open") == []


def test_cooldown_suppresses_a_new_alert_after_resolution(store) -> None:
    clock, sink = Clock(T0), ListSink()
    manager = AlertManager(store, _config(cooldown_s=300.0, resolve_after_s=60.0), [sink], clock)
    first = _fire_latency(manager)
    clock.t += 60
    manager.clear("latency", "fleet")
    clock.t += 100
    assert _fire_latency(manager) is None  # 100 s after resolution, within the cooldown
    assert manager.stats()["suppressed"] == 1 and manager.open_alerts() == []
    assert len(sink.events) == 2 and len(store.list_events(kind="latency")) == 1
    clock.t += 201
    second = _fire_latency(manager)
    assert second is not None and second.event_id != first.event_id
    assert len(sink.events) == 3 and len(store.list_events(kind="latency")) == 2
    # another subject is not affected by this key's cooldown
    assert manager.fire("drift", "bytes_in", "drift", metrics=["bytes_in"], value=0.5) is not None


def test_recover_keeps_open_alerts_without_notifying_again(store) -> None:
    clock, sink = Clock(T0), ListSink()
    manager = AlertManager(store, _config(), [sink], clock)
    opened = manager.fire("device_anomaly", "10.0.0.1", "anomalous", "critical", ["bytes_in"], 4, 3,
                          device_id="10.0.0.1")
    _fire_latency(manager)
    clock.t += 60
    manager.clear("latency", "fleet")  # resolved: must stay resolved and cooling down

    clock.t += 10
    sink2 = ListSink()
    restarted = AlertManager(store, _config(), [sink2], clock)
    assert restarted.recover() == 1
    [alert] = restarted.open_alerts()
    assert alert.event_id == opened.event_id and alert.device_id == "10.0.0.1"
    assert restarted.fire("device_anomaly", "10.0.0.1", "anomalous", "critical", ["bytes_in"], 5, 3,
                          device_id="10.0.0.1") is None
    assert _fire_latency(restarted) is None and restarted.stats()["suppressed"] == 1
    assert sink2.events == []
    [stored] = store.list_events(kind="device_anomaly")
    assert stored.event_id == opened.event_id and stored.payload["count"] == 2
    clock.t += 60
    assert restarted.clear("device_anomaly", "10.0.0.1").status == "resolved"
    assert [e.status for e in sink2.events] == ["resolved"]


class BrokenStore:
    def upsert_event(self, event: Event) -> str:
        raise StoreError("store down")


def test_store_and_sink_failures_do_not_stop_alerting() -> None:
    class Exploding(ListSink):
        def notify(self, event: Event) -> None:
            raise RuntimeError("sink bug")

    sink = ListSink()
    manager = AlertManager(BrokenStore(), _config(), [Exploding(), sink], Clock(T0))
    assert _fire_latency(manager) is not None
    assert len(sink.events) == 1
    stats = manager.stats()
    assert stats["store_errors"] == 1 and stats["sink_errors"] == 1 and stats["open"] == 1
    manager.close()
    assert sink.closed
    with pytest.raises(ValueError, match="kind"):
        manager.fire("cpu", "x", "unknown kind")


def test_log_sink_names_kind_device_metrics_and_value(caplog: pytest.LogCaptureFixture) -> None:
    event = Event(kind="device_anomaly", message="r7 anomalous", device_id="r7",
                  metrics=["bytes_in", "latency"],
                  payload={"subject": "r7", "value": 4.0, "threshold": 3.0, "count": 1})
    with caplog.at_level(logging.INFO, logger="eyenet.monitoring.alerts"):
        LogSink().notify(event)
    [line] = [r.getMessage() for r in caplog.records]
    assert "device_anomaly" in line and "r7" in line and "bytes_in,latency" in line and "value=4" in line


def _event(status: str = "open") -> Event:
    payload = {"subject": "r1", "opened_at": T0, "last_seen_at": T0 + 5, "count": 2,
               "resolved_at": T0 + 90 if status == "resolved" else None, "value": 5.0, "threshold": 3.0}
    return Event(kind="device_anomaly", message="device r1 anomalous", severity="critical",
                 device_id="r1", metrics=["latency"], status=status, payload=payload,
                 event_id="alert-device_anomaly-r1-1")


def test_webhook_payload_is_alertmanager_shaped() -> None:
    firing = alertmanager_payload(_event("open"), receiver="ops", external_url="http://eyenet:8000")
    assert set(firing) >= {"version", "groupKey", "status", "receiver", "groupLabels", "commonLabels",
                           "commonAnnotations", "externalURL", "alerts"}
    assert firing["version"] == "4" and firing["status"] == "firing" and firing["receiver"] == "ops"
    assert firing["groupLabels"] == {"alertname": "device_anomaly"}
    [alert] = firing["alerts"]
    assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
                          "fingerprint"}
    assert alert["labels"]["alertname"] == "device_anomaly" and alert["labels"]["device_id"] == "r1"
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["metric"] == "latency"
    assert set(alert["annotations"]) >= {"summary", "description"}
    assert alert["startsAt"] == "2023-11-14T22:13:20.000Z" and alert["endsAt"] == ZERO_TIME
    resolved = alertmanager_payload(_event("resolved"))
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2023-11-14T22:14:50.000Z"
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    json.dumps(firing)


class Receiver:
    """A local webhook receiver: answers each POST with the next status in ``statuses`` (then
    200); optionally holds every request until ``release`` is set."""

    def __init__(self, statuses: list[int] | None = None, hold: bool = False) -> None:
        self.statuses = list(statuses or [])
        self.hold = hold
        self.release = threading.Event()
        self.started = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.started += 1
                if receiver.hold:
                    receiver.release.wait(30)
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.bodies.append(json.loads(body))
                    receiver.auth.append(self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Receiver]]:
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    made: list[Receiver] = []
    sinks: list[WebhookSink] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    make.sinks = sinks  # type: ignore[attr-defined]
    yield make
    for r in made:
        r.release.set()
    for s in sinks:
        s.close(5)
    for r in made:
        r.stop()


def test_webhook_delivers_with_basic_auth_and_redacts_credentials(receiver_factory, caplog) -> None:
    receiver = receiver_factory()
    url = receiver.url.replace("http://", "http://ops:s3cret@")
    sink = WebhookSink(url, timeout_s=5, max_retries=0, backoff_s=0.01)
    receiver_factory.sinks.append(sink)
    assert "s3cret" not in repr(sink) and "s3cret" not in sink.stats()["url"]
    sink.notify(_event("open"))
    sink.notify(_event("resolved"))
    wait_for(lambda: sink.stats()["delivered"] == 2)
    assert [b["status"] for b in receiver.bodies] == ["firing", "resolved"]
    assert receiver.auth[0] == "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert redact_url("https://u:p@hooks.example:9093/x?y=1") == "https://***@hooks.example:9093/x?y=1"
    assert redact_url(receiver.url) == receiver.url


def test_webhook_retries_until_the_server_recovers(receiver_factory) -> None:
    receiver = receiver_factory(statuses=[500, 503])
    sink = WebhookSink(receiver.url, timeout_s=5, max_retries=3, backoff_s=0.01)
    receiver_factory.sinks.append(sink)
    sink.notify(_event())
    wait_for(lambda: sink.stats()["delivered"] == 1)
    stats = sink.stats()
    assert stats["retries"] == 2 and stats["failed"] == 0 and len(receiver.bodies) == 3


def test_webhook_gives_up_after_max_retries_and_never_retries_a_4xx(receiver_factory, caplog) -> None:
    receiver = receiver_factory(statuses=[500, 500, 500, 400])
    url = receiver.url.replace("http://", "http://ops:s3cret@")
    sink = WebhookSink(url, timeout_s=5, max_retries=2, backoff_s=0.01)
    receiver_factory.sinks.append(sink)
    with caplog.at_level(logging.WARNING, logger="eyenet.monitoring.webhook"):
        sink.notify(_event())
        wait_for(lambda: sink.stats()["failed"] == 1)
        sink.notify(_event())  # answered 400: rejected, not retried
        wait_for(lambda: sink.stats()["failed"] == 2)
    assert len(receiver.bodies) == 4 and sink.stats()["retries"] == 2
    assert "s3cret" not in caplog.text and "gave up" in caplog.text


def test_webhook_notify_never_blocks_on_a_hung_receiver(receiver_factory) -> None:
    receiver = receiver_factory(hold=True)
    sink = WebhookSink(receiver.url, timeout_s=30, max_retries=0, backoff_s=0.01, queue_size=2)
    receiver_factory.sinks.append(sink)
    sink.notify(_event())
    wait_for(lambda: receiver.started == 1)  # the delivery thread is stuck in this POST
    for _ in range(5):
        sink.notify(_event())  # returns although the receiver hangs
    stats = sink.stats()
    assert stats["queued"] == 2 and stats["dropped"] == 3 and stats["delivered"] == 0
    receiver.release.set()
    sink.close(10)
    assert sink.stats()["delivered"] == 3 and sink.stats()["queued"] == 0


def test_build_sinks_follows_the_config(receiver_factory) -> None:
    assert [type(s).__name__ for s in build_sinks(AlertConfig())] == ["LogSink"]
    sinks = build_sinks(AlertConfig(webhook_url="http://127.0.0.1:9/hook", webhook_max_retries=0))
    assert [type(s).__name__ for s in sinks] == ["LogSink", "WebhookSink"]
    sinks[1].close(1)
    with pytest.raises(ConfigError, match="http") as info:
        WebhookSink("ftp://u:pw@host/x")
    assert info.value.field == "alerts.webhook_url" and "pw" not in str(info.value)


def test_an_alert_opened_and_resolved_during_a_store_outage_reaches_the_store_after_it(store) -> None:
    """Regression: a resolution whose write failed was dropped, so an alert that opened and
    resolved while the store was locked (the chaos soak holds it 10 s) never reached it.
    It is kept and written by the next flush, which the monitor runs at every check."""
    class Outage:
        down = True

        def upsert_event(self, event: Event) -> str:
            if self.down:
                raise StoreError("database is locked")
            return store.upsert_event(event)

    outage, clock = Outage(), Clock(T0)
    manager = AlertManager(outage, _config(resolve_after_s=60.0), [ListSink()], clock)
    opened = _fire_latency(manager)
    clock.t += 61
    assert manager.clear("latency", "fleet").status == "resolved"
    assert manager.stats()["unwritten"] == 1
    outage.down = False
    manager.flush()
    [stored] = store.list_events(kind="latency")
    assert stored.event_id == opened.event_id and stored.status == "resolved"
    assert manager.stats()["unwritten"] == 0
