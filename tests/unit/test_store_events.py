"""The EventStore contract, run on every backend: events (alerts resolve by replacing
their id) and reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eyenet.store import Event, EventStore


def test_backend_implements_event_store(store):
    assert isinstance(store, EventStore)


def test_events_upsert_filter_and_order(store):
    t = datetime(2026, 1, 1, tzinfo=UTC)
    a = Event(kind="anomaly", message="burst", device_id="r1", metrics=["bytes_in"], ts=t)
    b = Event(kind="drift", message="drift", metrics=["latency"], ts=t + timedelta(minutes=5))
    store.upsert_event(a)
    store.upsert_event(b)
    assert [e.kind for e in store.list_events()] == ["drift", "anomaly"]
    assert [e.event_id for e in store.list_events(device_id="r1")] == [a.event_id]
    assert [e.kind for e in store.list_events(since=t + timedelta(minutes=1))] == ["drift"]
    a.status = "resolved"
    store.upsert_event(a)
    events = store.list_events(kind="anomaly")
    assert len(events) == 1 and events[0].status == "resolved"
    assert events[0].ts == t and events[0].metrics == ["bytes_in"]
    assert store.list_events(status="open")[0].event_id == b.event_id


def test_reports_round_trip_newest_first(store):
    first = store.save_report({"kind": "daily", "created_at": "2026-01-01T00:00:00+00:00", "n": 1})
    second = store.save_report({"kind": "daily", "created_at": "2026-01-02T00:00:00+00:00", "n": 2})
    assert store.get_report(first)["n"] == 1
    assert [r["n"] for r in store.list_reports()] == [2, 1]
    assert store.get_report("missing") is None
    assert second != first


def test_reports_filter_by_kind_and_time(store):
    for day, kind in ((1, "snapshot"), (2, "report"), (3, "snapshot")):
        store.save_report({"kind": kind, "created_at": f"2026-01-0{day}T00:00:00+00:00", "day": day})
    assert [r["day"] for r in store.list_reports(kind="snapshot")] == [3, 1]
    assert [r["day"] for r in store.list_reports(since="2026-01-02", until="2026-01-03")] == [2]
    assert [r["day"] for r in store.list_reports(kind="snapshot", since="2026-01-02")] == [3]


def test_events_filter_until_and_limit(store):
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        store.upsert_event(Event(kind="anomaly", message=f"m{i}", ts=t + timedelta(minutes=i)))
    assert [e.message for e in store.list_events(until=t + timedelta(minutes=2))] == ["m1", "m0"]
    assert [e.message for e in store.list_events(limit=2)] == ["m4", "m3"]
    assert store.list_events(kind="drift") == []


def test_saved_report_keeps_a_given_id_and_replaces_it(store):
    report = {"report_id": "r-1", "kind": "report", "created_at": "2026-01-01T00:00:00+00:00", "n": 1}
    assert store.save_report(report) == "r-1"
    store.save_report({**report, "n": 2})
    assert store.get_report("r-1")["n"] == 2
    assert [r["report_id"] for r in store.list_reports()] == ["r-1"]
