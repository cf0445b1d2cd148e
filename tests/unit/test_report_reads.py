"""Reading a report writes nothing: ``GET /v1/report``, ``Monitor.report`` and the monitor
actor's ``report`` may be repeated without adding reports, snapshots, state or alert
events. Saving is its own call (``save_report``). On every store backend."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from actors.monitor import MonitorActor
from eyenet.config import AlertConfig, EyeNetConfig, MonitorConfig
from eyenet.monitoring.monitor import Monitor, ScoreSummary
from eyenet.monitoring.reports import build_report
from eyenet.store import Event
from serve_app.api import create_app
from serve_app.local import StoreViews
from tests.helpers import Clock, ListSink

T0 = 1_700_000_000.0
WRITES = ("write_samples", "upsert_event", "save_report", "put_state", "allocate_model_version",
          "insert_model_record", "update_model_record", "compare_and_set_registry_state")


class RecordingStore:
    """The store, with every write call noted: a read path must leave ``writes`` empty."""

    def __init__(self, store: Any) -> None:
        self._store, self.writes = store, []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in WRITES:
            return attr

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(name)
            return attr(*args, **kwargs)

        return recorded


def _config(tmp_path) -> EyeNetConfig:
    return EyeNetConfig(
        artifact_root=str(tmp_path / "artifacts"),
        alerts=AlertConfig(anomaly_min_points=3, anomaly_window_s=60.0, resolve_after_s=30.0),
        monitor=MonitorConfig(latency_window_s=300.0, snapshot_interval_s=60.0))


def _summary(anomalies: list | None = None) -> ScoreSummary:
    return ScoreSummary(sent_at_s=T0, latency_ms=12.0, n_windows=10, device_counts={"r1": 10},
                        anomalies=anomalies or [])


def _history(store, config: EyeNetConfig, clock: Clock) -> Monitor:
    """A monitor with a saved snapshot, an open alert and an unsaved current period, plus an
    older duplicate of the open alert, as a crash between two writes would leave it (a
    restarting monitor retires it: that write belongs to start-up, never to a read)."""
    monitor = Monitor(config, store, None, sinks=[ListSink()], now_s=clock)
    monitor.record(_summary([("r1", 1, 0.9, ["latency"])] * 3))
    assert [e.kind for e in monitor.check()] == ["device_anomaly"]
    clock.t += 60
    monitor.snapshot()
    clock.t += 5
    monitor.record(_summary())
    store.upsert_event(Event(kind="device_anomaly", message="left by a crash", device_id="r1",
                             ts=datetime.fromtimestamp(T0 - 100, UTC), status="open",
                             payload={"subject": "r1", "opened_at": T0 - 100},
                             event_id="alert-device_anomaly-r1-duplicate"))
    return monitor


def _contents(store) -> tuple:
    return ([r for r in store.list_reports(limit=10_000)],
            [e.to_dict() for e in store.list_events(limit=10_000)], store.get_state("monitor"))


def test_monitor_report_twice_writes_nothing_and_save_report_saves_one(store, tmp_path):
    clock = Clock(T0)
    monitor = _history(store, _config(tmp_path), clock)
    before = _contents(store)
    spy = RecordingStore(store)
    monitor.store = monitor.alerts.store = spy
    first, second = monitor.report(since_s=T0 - 10), monitor.report(since_s=T0 - 10)
    assert spy.writes == []
    assert _contents(store) == before
    assert first == second and "report_id" not in first
    assert first["snapshots"] == 2 and first["windows_scored"] == 20  # saved + current period

    saved = monitor.save_report(since_s=T0 - 10)
    assert spy.writes == ["save_report"]
    assert [r["report_id"] for r in store.list_reports(kind="report")] == [saved["report_id"]]
    assert store.get_report(saved["report_id"])["windows_scored"] == 20


def test_get_report_twice_writes_nothing(store, tmp_path):
    config = _config(tmp_path)
    _history(store, config, Clock(T0))
    before = _contents(store)
    spy = RecordingStore(store)
    api = TestClient(create_app(StoreViews(config, spy), api_key=""))
    # the store's snapshots hold T0's period; the endpoint reports up to the real now
    since = datetime.fromtimestamp(T0 - 10, UTC).isoformat()
    answers = [api.get("/v1/report", params={"since": since}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert spy.writes == []
    assert _contents(store) == before
    report = answers[0].json()
    assert report["kind"] == "report" and report["snapshots"] == 1 and report["windows_scored"] == 10
    assert report["alerts"]["by_kind"]["device_anomaly"] == 1  # the alert opened at T0


def test_monitor_actor_report_writes_nothing(store, tmp_path):
    clock = Clock(T0)
    monitor = _history(store, _config(tmp_path), clock)
    spy = RecordingStore(store)
    monitor.store = monitor.alerts.store = spy
    # the shell alone, without its threads or Ray: its report must not snapshot first
    actor = MonitorActor.__new__(MonitorActor)
    actor.monitor, actor._lock = monitor, threading.Lock()
    before = _contents(store)
    assert actor.report(T0 - 10) == actor.report(T0 - 10)
    assert spy.writes == [] and _contents(store) == before
    saved = actor.save_report(T0 - 10)
    assert spy.writes == ["save_report"] and store.get_report(saved["report_id"]) is not None


def test_build_report_reads_the_store_alone(store, tmp_path):
    clock = Clock(T0)
    _history(store, _config(tmp_path), clock)
    spy = RecordingStore(store)
    report = build_report(spy, T0 - 10, now_s=clock.t)
    assert spy.writes == []
    assert report["snapshots"] == 1 and report["windows_scored"] == 10 and "report_id" not in report
