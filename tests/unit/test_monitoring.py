"""Monitor: latency/drift/device-anomaly rules, stats, snapshots, restart and report
arithmetic, driven by an injected clock on both store backends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eyenet.config import AlertConfig, EyeNetConfig, MonitorConfig
from eyenet.detection.features import feature_reference
from eyenet.monitoring.drift import bin_counts
from eyenet.monitoring.monitor import LatencyHistogram, LatencyWindow, Monitor, ScoreSummary
from tests.helpers import Clock, ListSink

T0 = 1_700_000_000.0
NAMES = ["bytes_in", "latency"]


def _data(rng: np.random.Generator, n: int, shift_std: float = 0.0) -> np.ndarray:
    return np.column_stack([rng.normal(1000.0 + 100.0 * shift_std, 100.0, n),
                            rng.normal(20.0 + 5.0 * shift_std, 5.0, n)])


@pytest.fixture(scope="module")
def reference() -> dict:
    return feature_reference(_data(np.random.default_rng(0), 20_000), NAMES)


def _config(**alerts) -> EyeNetConfig:
    return EyeNetConfig(
        alerts=AlertConfig(**{"latency_avg_ms": 100.0, "drift_threshold": 0.3, "cooldown_s": 300.0,
                              "anomaly_min_points": 3, "anomaly_window_s": 60.0,
                              "resolve_after_s": 30.0, **alerts}),
        monitor=MonitorConfig(drift_window_s=600.0, drift_bucket_s=60.0, min_drift_samples=500,
                              latency_window_s=300.0, snapshot_interval_s=60.0))


def _summary(latency_ms: float = 10.0, devices: dict[str, int] | None = None,
             anomalies: list | None = None, feature_counts: dict | None = None,
             model_version: int | None = 1) -> ScoreSummary:
    devices = devices if devices is not None else {"r1": 10}
    return ScoreSummary(sent_at_s=T0, latency_ms=latency_ms, n_windows=sum(devices.values()),
                        device_counts=devices, anomalies=anomalies or [],
                        feature_counts=feature_counts or {}, model_version=model_version)


def _monitor(store, clock: Clock, reference: dict | None = None, sink: ListSink | None = None,
             **alerts) -> Monitor:
    return Monitor(_config(**alerts), store, reference, model_version=1,
                   sinks=[sink if sink is not None else ListSink()], now_s=clock)


def _counts(rng: np.random.Generator, reference: dict, n: int, shift_std: float = 0.0) -> dict:
    return {k: v.tolist() for k, v in bin_counts(_data(rng, n, shift_std), NAMES, reference).items()}


# -- latency ------------------------------------------------------------------------------
def test_histogram_quantiles_are_within_bin_resolution_and_merge() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(3.0, 1.0, 5000), rng.lognormal(5.0, 0.5, 5000)
    ha, hb = LatencyHistogram(), LatencyHistogram()
    ha.add(a)
    hb.add(b)
    merged = LatencyHistogram.from_dict(json.loads(json.dumps(ha.to_dict()))).merge(hb)
    both = np.concatenate([a, b])
    assert merged.count == 10_000 and merged.sum_ms == pytest.approx(both.sum())
    step = 10 ** 0.1  # one bin
    for q in (0.5, 0.95, 0.99):
        assert np.quantile(both, q) / step <= merged.quantile(q) <= np.quantile(both, q) * step
    assert LatencyHistogram().quantile(0.95) is None
    tails = LatencyHistogram()
    tails.add(np.array([0.001, 1e9]))
    assert tails.quantile(0.01) == pytest.approx(0.1) and tails.quantile(1.0) == pytest.approx(1e5)


def test_latency_window_slides_and_is_capped() -> None:
    clock = Clock(T0)
    window = LatencyWindow(60.0, clock, max_points=1000)
    for ms in range(1, 101):
        window.add(float(ms))
    stats = window.stats()
    assert stats["count"] == 100 and stats["mean_ms"] == pytest.approx(50.5)
    assert stats["p50_ms"] == pytest.approx(50.5) and 95 <= stats["p95_ms"] <= 96
    clock.t += 61
    window.add(7.0)
    assert window.stats()["count"] == 1 and window.stats()["p99_ms"] == 7.0
    for _ in range(5000):
        window.add(1.0)
    assert window.stats()["count"] == 1000


def test_latency_alert_fires_above_mean_and_resolves(store) -> None:
    clock, sink = Clock(T0), ListSink()
    monitor = _monitor(store, clock, sink=sink)
    for ms in (90.0, 100.0, 110.0):
        monitor.record(_summary(ms))
    assert monitor.check() == []  # mean exactly 100: not above
    monitor.record(_summary(150.0))
    [event] = monitor.check()
    assert event.kind == "latency" and event.payload["subject"] == "fleet"
    assert event.payload["value"] == pytest.approx(112.5) and event.payload["threshold"] == 100.0
    clock.t += 290
    assert monitor.check() == []  # still slow: a repeat (last seen now), not a new alert
    clock.t += 11  # the slow batches leave the window
    monitor.record(_summary(20.0))
    assert monitor.check() == []  # clear, but last seen only 11 s ago (< resolve_after_s)
    clock.t += 30
    [resolved] = monitor.check()
    assert resolved.status == "resolved" and resolved.event_id == event.event_id
    assert [e.status for e in sink.events] == ["open", "resolved"]
    assert store.list_events(kind="latency", status="resolved")[0].event_id == event.event_id


# -- drift --------------------------------------------------------------------------------
def test_drift_alert_on_a_shifted_feed_but_not_on_a_clean_one(store, reference: dict) -> None:
    rng = np.random.default_rng(2)
    clean = _monitor(store, Clock(T0), reference)
    for _ in range(4):
        clean.record(_summary(feature_counts=_counts(rng, reference, 300)))
    assert all(s is not None and s < 0.1 for s in clean.stats()["drift"].values())
    assert clean.check() == []

    clock = Clock(T0 + 10_000)
    shifted = _monitor(store, clock, reference)
    shifted.record(_summary(feature_counts=_counts(rng, reference, 400, shift_std=2.0)))
    assert shifted.check() == []  # fewer than min_drift_samples values: no score yet
    shifted.record(_summary(feature_counts=_counts(rng, reference, 400, shift_std=2.0)))
    events = shifted.check()
    assert sorted(e.payload["subject"] for e in events) == NAMES
    for e in events:
        assert e.kind == "drift" and e.metrics == [e.payload["subject"]] and e.payload["value"] > 0.3


def test_stale_model_counts_are_skipped_and_set_reference_resets_drift(store, reference: dict) -> None:
    rng = np.random.default_rng(3)
    monitor = _monitor(store, Clock(T0), reference)
    monitor.record(_summary(feature_counts=_counts(rng, reference, 600), model_version=1))
    monitor.record(_summary(feature_counts=_counts(rng, reference, 600, 3.0), model_version=0))
    assert monitor.stats()["counts"]["drift_skipped"] == 1
    assert monitor.stats()["drift_samples"] == {"bytes_in": 600, "latency": 600}
    monitor.set_reference(reference, 2)
    assert monitor.stats()["drift"] == {"bytes_in": None, "latency": None}
    assert monitor.stats()["model_version"] == 2


# -- device anomalies ---------------------------------------------------------------------
def test_device_anomaly_alert_names_device_and_metrics(store) -> None:
    clock, sink = Clock(T0), ListSink()
    monitor = _monitor(store, clock, sink=sink)
    points = [("r1", 1, 0.9, ["latency", "bytes_in"]), ("r1", 2, 0.8, ["latency"]),
              ("r1", 3, 0.95, ["bytes_in", "latency"]), ("r2", 1, 0.9, ["bytes_out"]),
              ("r2", 2, 0.9, ["bytes_out"])]
    monitor.record(_summary(devices={"r1": 30, "r2": 30, "r3": 30}, anomalies=points))
    [event] = monitor.check()
    assert event.kind == "device_anomaly" and event.device_id == "r1"
    assert event.metrics == ["latency", "bytes_in"] and "r1" in event.message
    assert event.payload["value"] == 3.0 and event.severity == "critical"
    rates = {r["device_id"]: r for r in monitor.stats()["anomaly_rate"]}
    assert rates["r1"]["rate"] == pytest.approx(0.1) and rates["r3"]["rate"] == 0.0
    assert list(rates)[:2] == ["r1", "r2"]
    assert monitor.stats()["anomaly_rate_total"]["anomalies"] == 5

    clock.t += 59
    assert monitor.check() == []  # the points are still in the window: a repeat
    clock.t += 2  # r1's points leave anomaly_window_s: the condition no longer holds
    assert monitor.check() == []  # last seen 2 s ago: not resolved yet
    clock.t += 30
    [resolved] = monitor.check()
    assert resolved.status == "resolved" and resolved.device_id == "r1"
    [stored] = store.list_events(kind="device_anomaly")
    assert stored.status == "resolved" and stored.payload["resolved_at"] == T0 + 91
    assert [e.status for e in sink.events] == ["open", "resolved"]


def test_repeat_checks_do_not_renotify_and_memory_is_bounded(store) -> None:
    clock, sink = Clock(T0), ListSink()
    monitor = _monitor(store, clock, sink=sink)
    many = [(f"dev-{i}", i, 0.9, ["bytes_in"]) for i in range(200)]
    monitor.record(_summary(devices={f"dev-{i}": 1 for i in range(200)}, anomalies=many))
    hot = [("r1", i, 0.9, ["latency"]) for i in range(5000)]
    monitor.record(_summary(anomalies=hot))
    for _ in range(10):
        monitor.check()
        clock.t += 1
    assert len(sink.events) == 1 and monitor.alerts.get("device_anomaly", "r1").payload["count"] == 10
    assert len(monitor._points["r1"]) == 1000  # capped per device
    clock.t += 61
    monitor.check()
    assert monitor._points == {}  # idle devices are forgotten


# -- snapshots, restart, reports --------------------------------------------------------------
def test_snapshots_follow_the_interval_and_restart_resumes(store, reference: dict) -> None:
    clock, sink = Clock(T0), ListSink()
    rng = np.random.default_rng(4)
    monitor = _monitor(store, clock, reference, sink=sink)
    monitor.record(_summary(anomalies=[("10.0.0.1", i, 0.9, ["latency"]) for i in range(3)],
                            feature_counts=_counts(rng, reference, 800, shift_std=2.0)))
    opened = monitor.check()
    assert {e.kind for e in opened} == {"device_anomaly", "drift"}
    clock.t += 30
    monitor.record(_summary(anomalies=[("10.0.0.1", i, 0.9, ["latency"]) for i in range(3)]))
    clock.t += 29
    assert monitor.maybe_snapshot() is None
    clock.t += 1
    snap = monitor.maybe_snapshot()
    assert snap["kind"] == "monitor_snapshot" and snap["alerts_opened"] == 3
    assert snap["anomalies_by_device"] == [["10.0.0.1", 6]] and snap["windows_scored"] == 20
    assert snap["period_start_s"] == T0 and snap["period_end_s"] == T0 + 60
    assert [r["report_id"] for r in store.list_reports(kind="monitor_snapshot")] == [snap["report_id"]]
    drift_before = monitor.stats()["drift"]

    clock.t += 5
    sink2 = ListSink()
    restarted = _monitor(store, clock, reference, sink=sink2)
    assert restarted.restored_drift and restarted.stats()["drift"] == drift_before
    assert {e.event_id for e in restarted.alerts.open_alerts()} == {e.event_id for e in opened}
    assert restarted.check() == []  # restored points (from T0+30) and drift: repeats only
    assert sink2.events == []
    assert restarted.alerts.get("device_anomaly", "10.0.0.1").payload["count"] == 2

    other = feature_reference(_data(rng, 5000, shift_std=5.0), NAMES)
    assert not _monitor(store, clock, other).restored_drift  # other bins: drift starts afresh


def test_report_merges_snapshots(store) -> None:
    clock = Clock(T0)
    monitor = _monitor(store, clock)
    for i in range(90):  # period 1: fast batches; device a twice anomalous
        anomalies = [("a", i, 0.9, ["bytes_in"])] if i < 2 else []
        monitor.record(_summary(20.0, devices={"a": 5, "b": 5}, anomalies=anomalies))
    clock.t += 60
    first = monitor.snapshot()
    clock.t += 60  # period 2: slow batches; b five times, a once
    for i in range(10):
        anomalies = [("b", i, 0.9, ["latency"])] if i < 5 else []
        anomalies += [("a", 99, 0.9, ["bytes_in"])] if i == 0 else []
        monitor.record(_summary(500.0, devices={"a": 5, "b": 5}, anomalies=anomalies))
    opened = monitor.check()
    assert [e.device_id for e in opened] == ["b"]  # a's points are too far apart
    clock.t += 1
    monitor.snapshot()
    clock.t += 10
    monitor.record(_summary(500.0, devices={"c": 1}, anomalies=[("c", 1, 0.9, ["latency"])]))

    report = monitor.report(since_s=T0)
    assert report["snapshots"] == 3  # two saved and the current period
    lat = report["latency"]
    assert lat["count"] == 101 and lat["avg_ms"] == pytest.approx((90 * 20 + 11 * 500) / 101)
    assert 500 / 10 ** 0.1 <= lat["p95_ms"] <= 500 * 10 ** 0.1
    assert report["alerts"] == {"count": 1, "by_kind": {"latency": 0, "drift": 0, "device_anomaly": 1}}
    assert report["anomalies_by_device"] == [{"device_id": "b", "anomalies": 5},
                                             {"device_id": "a", "anomalies": 3},
                                             {"device_id": "c", "anomalies": 1}]
    assert report["windows_scored"] == 90 * 10 + 10 * 10 + 1 and report["anomalies"] == 9
    assert store.list_reports(kind="report") == []  # reading saved nothing
    saved = store.get_report(monitor.save_report(since_s=T0)["report_id"])
    assert saved["kind"] == "report" and saved["latency"]["avg_ms"] == lat["avg_ms"]

    only_second = monitor.report(since_s=first["period_end_s"] + 1, until_s=clock.t - 5)
    assert only_second["snapshots"] == 1 and only_second["latency"]["count"] == 10
    assert only_second["anomalies_by_device"][0] == {"device_id": "b", "anomalies": 5}
    assert only_second["latency"]["avg_ms"] == pytest.approx(500.0)


def test_report_averages_drift_per_feature(store, reference: dict) -> None:
    clock = Clock(T0)
    rng = np.random.default_rng(5)
    monitor = _monitor(store, clock, reference)
    monitor.record(_summary(feature_counts=_counts(rng, reference, 1000)))
    clock.t += 60
    a = monitor.snapshot()["drift"]
    monitor.record(_summary(feature_counts=_counts(rng, reference, 3000, shift_std=2.0)))
    clock.t += 60
    b = monitor.snapshot()["drift"]
    drift = monitor.report(since_s=T0)["drift"]
    for name in NAMES:
        assert drift["per_feature"][name] == pytest.approx((a[name] + b[name]) / 2)
    assert drift["overall"] == pytest.approx(np.mean(list(drift["per_feature"].values())))
    json.dumps(monitor.stats())


def test_the_monitor_shows_which_devices_are_learning(tmp_path):
    """A device reported learning is listed until a batch judges it."""
    from eyenet.store import open_store

    clock = Clock()
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    monitor = Monitor(EyeNetConfig(), store, None, sinks=[], now_s=clock)
    monitor.record(ScoreSummary(sent_at_s=clock(), latency_ms=1.0, n_windows=2,
                                device_counts={"a": 1, "b": 1}, learning_devices=["a", "b"]))
    assert monitor.stats()["learning_devices"] == {"count": 2, "devices": ["a", "b"]}
    monitor.record(ScoreSummary(sent_at_s=clock(), latency_ms=1.0, n_windows=1,
                                device_counts={"a": 1}, judged_devices=["a"]))
    assert monitor.stats()["learning_devices"] == {"count": 1, "devices": ["b"]}
