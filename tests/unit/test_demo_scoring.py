"""The demo's figures against hand-made incidents and events (no Ray, no store)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eyenet.store import Event
from jobs.demo import incident_devices
from jobs.demo_scoring import Span, Truth, score_demo, span_of_event, truths_from
from jobs.demo_view import summary_rows

S = 1000
FLEET = [f"dev-{i:04d}" for i in range(6)]
TRUTHS = [Truth("dev-0001", "ddos_burst", 100 * S, 130 * S),
          Truth("dev-0003", "link_down", 100 * S, 125 * S)]


def test_every_incident_found_no_false_alert():
    spans = [Span("dev-0001", "anomaly", 104 * S, 128 * S), Span("dev-0003", "anomaly", 98 * S, 110 * S),
             Span("dev-0001", "device_anomaly", 108 * S, 140 * S)]
    result = score_demo(TRUTHS, spans, FLEET)
    assert result["event_recall"] == 1.0 and result["event_precision"] == 1.0
    assert result["false_alerts_on_quiet_devices"] == 0 and result["quiet_devices_alerting"] == []
    # dev-0001 detected 4 s in (its anomaly event, not the later alert); dev-0003 at once
    assert [r["time_to_detect_s"] for r in result["per_incident"]] == [4.0, 0.0]
    assert result["mean_time_to_detect_s"] == 2.0
    assert result["per_incident"][0]["alerts"] == 1 and result["quiet_devices"] == 4


def test_misses_false_alarms_and_grace():
    spans = [Span("dev-0001", "anomaly", 139 * S, 141 * S),   # within the 15 s grace: counts
             Span("dev-0003", "anomaly", 150 * S, 151 * S),   # after the grace: a false event
             Span("dev-0005", "anomaly", 110 * S, 112 * S),   # a quiet device
             Span("dev-0005", "device_anomaly", 111 * S, 120 * S),
             Span("dev-0001", "anomaly", 50 * S, 60 * S)]     # before the incident: false
    result = score_demo(TRUTHS, spans, FLEET)
    assert result["event_recall"] == 0.5
    missed = result["per_incident"][1]
    assert missed["found"] is False and missed["time_to_detect_s"] is None
    assert result["event_precision"] == pytest.approx(1 / 4)
    assert result["false_alerts_on_quiet_devices"] == 2 and result["quiet_devices_alerting"] == ["dev-0005"]
    assert result["mean_time_to_detect_s"] == 39.0
    assert score_demo(TRUTHS, spans, FLEET, grace_s=5)["event_recall"] == 0.0


def test_an_alert_alone_finds_an_incident_and_no_events_means_no_precision():
    result = score_demo(TRUTHS[:1], [Span("dev-0001", "device_anomaly", 120 * S, 200 * S)], FLEET)
    assert result["event_recall"] == 1.0 and result["event_precision"] is None
    assert result["per_incident"][0]["time_to_detect_s"] == 20.0
    empty = score_demo(TRUTHS, [], FLEET)
    assert empty["event_recall"] == 0.0 and empty["mean_time_to_detect_s"] is None
    rows = dict(summary_rows({**empty, "wall_s": 12.0}))
    assert rows["event recall"].startswith("0 %") and rows["  ddos_burst on dev-0001"] == "MISSED"


def test_stored_events_become_spans():
    ts = datetime.fromtimestamp(100, UTC)
    episode = Event(kind="anomaly", message="m", device_id="dev-0001", ts=ts, metrics=["bytes_in"],
                    payload={"start_ms": 100_000, "end_ms": 120_000}, event_id="e1")
    regime = Event(kind="regime_change", message="m", device_id="dev-0001", ts=ts,
                   payload={"start_ms": 100_000, "adopted_ms": 160_000})
    alert_open = Event(kind="device_anomaly", message="m", device_id="dev-0002", ts=ts,
                       payload={"opened_at": 105.0, "resolved_at": None})
    alert_done = Event(kind="device_anomaly", message="m", device_id="dev-0002", ts=ts,
                       payload={"opened_at": 105.0, "resolved_at": 130.5})
    drift = Event(kind="drift", message="m", ts=ts)
    other = Event(kind="promotion", message="m", device_id="dev-0001", ts=ts)
    assert span_of_event(episode, 999_000) == Span("dev-0001", "anomaly", 100_000, 120_000, "e1",
                                                   ("bytes_in",))
    assert (span_of_event(regime, 0).start_ms, span_of_event(regime, 0).end_ms) == (100_000, 160_000)
    assert span_of_event(alert_open, 999_000).end_ms == 999_000
    assert span_of_event(alert_done, 999_000).end_ms == 130_500 and span_of_event(alert_done, 0).is_alert
    assert span_of_event(drift, 0) is None and span_of_event(other, 0) is None


def test_truths_from_incident_dicts_and_devices_spread_over_the_fleet():
    assert truths_from([{"device_id": "d", "kind": "k", "start_ms": 1, "end_ms": 2, "metrics": []}]) == \
        [Truth("d", "k", 1, 2)]
    assert incident_devices(20) == ["dev-0002", "dev-0007", "dev-0012", "dev-0017"]
    for n in (5, 8, 11, 20, 33):
        assert len(set(incident_devices(n))) == 4
        assert all(int(d[4:]) < n for d in incident_devices(n))
