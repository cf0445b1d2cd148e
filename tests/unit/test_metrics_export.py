"""/metrics: the exporter's output parsed back from a known snapshot (names, labels, values),
the monitor's per-device and latency figures, collector counts by reason from a real
collector, and the endpoint, which answers 200 with whatever parts it can reach."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from eyenet.config import DEFAULT_MODEL_NAME, AlertConfig, EyeNetConfig, MonitorConfig
from eyenet.errors import StoreConnectionError
from eyenet.monitoring.exporter import CONTENT_TYPE_LATEST, METRICS, MetricsSnapshot, render, series_names
from eyenet.monitoring.latency import SCORING_LATENCY_BUCKETS_S
from eyenet.monitoring.monitor import Monitor, ScoreSummary
from eyenet.serving.inference import InferenceService
from eyenet.sources.base import FetchResult, Source
from eyenet.store import Event, open_store
from eyenet.streaming.collector import Collector
from serve_app.api import create_app
from serve_app.local import LocalBackend
from tests.helpers import Clock, ListSink
from tests.synthetic import promoted_store

T0 = 1_700_000_000.0
KEY = "scrape-key"

SNAPSHOT = MetricsSnapshot(
    monitor={"devices": [
        {"device_id": "r1", "state": "judged", "score": 0.12, "threshold": 0.8, "scored": 40,
         "anomalies": 0, "last_scored_s": T0},
        {"device_id": "r2", "state": "anomalous", "score": 0.97, "threshold": 0.75, "scored": 40,
         "anomalies": 7, "last_scored_s": T0 + 1},
        {"device_id": "new1", "state": "learning", "score": None, "threshold": None, "scored": 5,
         "anomalies": 0, "last_scored_s": T0 + 2}],
        "latency_buckets": {"bounds_s": [0.01, 0.1], "counts": [3, 2, 1], "sum_s": 1.25},
        "drift": {"cpu": 0.05, "latency": 0.41, "memory": None}, "drift_threshold": 0.3,
        "open_alerts": {"latency": 0, "drift": 1, "device_anomaly": 1}},
    collectors={"sim-0": {"totals": {"fetched": 100, "stored": 95, "store_duplicates": 2,
                                     "source_errors": 1},
                          "repaired": {"metric_negative:latency": 3, "reordered": 1},
                          "rejected": {"duplicate": 2, "no_valid_metrics": 1},
                          "device_errors": {"r1": 2}, "pending_samples": 0, "lag_s": 1.5}},
    collectors_down=["sim-1"], production={"eyenet": 3},
    components={"monitor": True, "collectors": True, "store": True, "registry": True})


def parse(text: str | bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted label pairs: value}, read back with prometheus_client's parser."""
    text = text.decode() if isinstance(text, bytes) else text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(series: dict, name: str, **labels: str) -> float:
    return series[name][tuple(sorted(labels.items()))]


# -- the exporter -----------------------------------------------------------------------------
def test_every_declared_family_is_exported_with_its_type_even_when_empty():
    families = {f.name: f.type for f in text_string_to_metric_families(render(MetricsSnapshot()).decode())}
    want = {spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name: spec.kind
            for spec in METRICS.values()}
    assert families == want
    assert all(name.startswith("eyenet_") for name in series_names())
    assert all(spec.name.endswith("_total") for spec in METRICS.values() if spec.kind == "counter")


def test_a_known_snapshot_reads_back_with_its_names_labels_and_values():
    s = parse(render(SNAPSHOT))
    assert set(s) <= set(series_names())  # nothing undeclared is written
    for name, series in s.items():  # and every sample carries exactly its declared labels
        assert all({k for k, _ in labels} == set(series_names()[name][1]) for labels in series), name
    assert value(s, "eyenet_device_anomaly_score", device="r2") == 0.97
    assert value(s, "eyenet_device_threshold", device="r2") == 0.75
    assert "new1" not in {dict(k)["device"] for k in s["eyenet_device_anomaly_score"]}  # no score yet
    states = {(dict(k)["device"], dict(k)["state"]): v for k, v in s["eyenet_device_state"].items()}
    assert {d: st for (d, st), v in states.items() if v == 1} == {"r1": "judged", "r2": "anomalous",
                                                                  "new1": "learning"}
    assert len(states) == 9  # every state of every device, 0 or 1
    assert value(s, "eyenet_anomaly_points_total", device="r2") == 7
    assert value(s, "eyenet_scored_points_total", device="new1") == 5
    assert value(s, "eyenet_device_last_scored_timestamp_seconds", device="r1") == T0
    assert {dict(k)["kind"]: v for k, v in s["eyenet_open_alerts"].items()} == {
        "latency": 0, "drift": 1, "device_anomaly": 1}
    drift = {dict(k)["feature"]: v for k, v in s["eyenet_drift_score"].items()}
    assert drift == {"cpu": 0.05, "latency": 0.41}  # no score yet (None): no sample
    assert value(s, "eyenet_drift_threshold") == 0.3
    assert value(s, "eyenet_production_model_version", model="eyenet") == 3
    assert {dict(k)["component"]: v for k, v in s["eyenet_component_up"].items()} == dict.fromkeys(
        ("monitor", "collectors", "store", "registry"), 1.0)


def test_collector_counts_by_reason_and_metric():
    s = parse(render(SNAPSHOT))
    assert value(s, "eyenet_collector_samples_stored_total", collector="sim-0") == 95
    assert value(s, "eyenet_collector_samples_fetched_total", collector="sim-0") == 100
    assert value(s, "eyenet_collector_samples_duplicate_total", collector="sim-0") == 2
    assert value(s, "eyenet_collector_samples_repaired_total", collector="sim-0", reason="metric_negative",
                 metric="latency") == 3
    assert value(s, "eyenet_collector_samples_repaired_total", collector="sim-0", reason="reordered",
                 metric="") == 1
    assert value(s, "eyenet_collector_samples_rejected_total", collector="sim-0", reason="duplicate",
                 metric="") == 2
    assert value(s, "eyenet_collector_samples_rejected_total", collector="sim-0", reason="no_valid_metrics",
                 metric="") == 1
    assert {dict(k)["reason"]: v for k, v in s["eyenet_collector_errors_total"].items()} == {
        "source": 1, "store": 0, "device": 2}
    assert value(s, "eyenet_collector_lag_seconds", collector="sim-0") == 1.5
    assert {dict(k)["collector"]: v for k, v in s["eyenet_collector_up"].items()} == {"sim-0": 1, "sim-1": 0}


def test_histogram_buckets_are_cumulative_and_end_at_the_count():
    s = parse(render(SNAPSHOT))
    buckets = {dict(k)["le"]: v for k, v in s["eyenet_scoring_latency_seconds_bucket"].items()}
    assert buckets == {"0.01": 3, "0.1": 5, "+Inf": 6}
    assert value(s, "eyenet_scoring_latency_seconds_count") == 6
    assert value(s, "eyenet_scoring_latency_seconds_sum") == 1.25


def test_bad_figures_are_skipped_and_do_not_lose_the_other_parts():
    snapshot = MetricsSnapshot(
        monitor={"devices": [{"device_id": "r1", "score": float("nan"), "scored": "many", "state": "judged"},
                             {"device_id": "r1", "score": 0.5, "scored": 3, "state": "judged"}],
                 "latency_buckets": {"bounds_s": [0.1], "counts": [1, 2, 3]}},  # one count too many
        collectors={"sim-0": {"totals": {"stored": 4}, "rejected": {"duplicate": None}}},
        production={"eyenet": None}, components={"store": False})
    s = parse(render(snapshot))
    assert "eyenet_device_anomaly_score" not in s  # NaN is no value, and a repeated device is ignored
    assert value(s, "eyenet_device_state", device="r1", state="judged") == 1
    assert "eyenet_scored_points_total" not in s
    assert "eyenet_scoring_latency_seconds_count" not in s  # the malformed histogram is left out
    assert value(s, "eyenet_collector_samples_stored_total", collector="sim-0") == 4
    assert "eyenet_collector_samples_rejected_total" not in s
    assert "eyenet_production_model_version" not in s  # no production version: absent, not 0
    assert value(s, "eyenet_component_up", component="store") == 0


def test_each_render_is_a_fresh_registry():
    assert "eyenet_device_anomaly_score{" in render(SNAPSHOT).decode()
    assert "eyenet_device_anomaly_score{" not in render(MetricsSnapshot()).decode()
    calls = []
    render(lambda: calls.append(1) or SNAPSHOT)  # a callable is read once per scrape
    assert calls == [1]


# -- the monitor's figures ----------------------------------------------------------------------
def _monitor(tmp_path, clock: Clock) -> Monitor:
    config = EyeNetConfig(alerts=AlertConfig(anomaly_min_points=3, anomaly_window_s=60.0),
                          monitor=MonitorConfig(latency_window_s=300.0))
    return Monitor(config, open_store(f"sqlite:///{tmp_path}/m.db"), None, model_version=1,
                   sinks=[ListSink()], now_s=clock)


def _summary(latency_ms: float = 5.0, **fields) -> ScoreSummary:
    return ScoreSummary(sent_at_s=T0, latency_ms=latency_ms, n_windows=1, **fields)


def test_monitor_keeps_each_devices_state_newest_score_and_cumulative_counts(tmp_path):
    clock = Clock(T0)
    monitor = _monitor(tmp_path, clock)
    for _ in range(2):
        monitor.record(_summary(device_counts={"r1": 10, "r2": 10, "new1": 5},
                                anomalies=[("r2", 1, 0.9, ["latency"])] * 2,
                                judged_devices=["r1", "r2"], learning_devices=["new1"],
                                scores={"r1": 0.1, "r2": 0.95}, thresholds={"r1": 0.8, "r2": 0.8}))
        clock.now += 1
    monitor.record(_summary(device_counts={"r1": 1}, scores={"r1": 0.3}, thresholds={"r1": 0.7}))
    monitor.check()  # r2's 4 points in the window open its device_anomaly alert
    s = parse(render(MetricsSnapshot(monitor=monitor.metrics())))
    states = {dict(k)["device"]: dict(k)["state"] for k, v in s["eyenet_device_state"].items() if v == 1}
    assert states == {"r1": "judged", "r2": "anomalous", "new1": "learning"}
    assert value(s, "eyenet_scored_points_total", device="r1") == 21
    assert value(s, "eyenet_anomaly_points_total", device="r2") == 4
    assert value(s, "eyenet_device_anomaly_score", device="r1") == 0.3  # the newest one
    assert value(s, "eyenet_device_threshold", device="r1") == 0.7
    assert value(s, "eyenet_device_last_scored_timestamp_seconds", device="r1") == T0 + 2
    assert value(s, "eyenet_open_alerts", kind="device_anomaly") == 1
    assert value(s, "eyenet_open_alerts", kind="drift") == 0


def test_monitor_latency_buckets_count_every_valid_observation_once(tmp_path):
    monitor = _monitor(tmp_path, Clock(T0))
    latencies_ms = [0.5, 1.0, 7.0, 30.0, 2000.0, 20_000.0]  # 1.0 ms sits exactly on a bound
    for latency in [*latencies_ms, float("nan"), -1.0]:  # the last two are refused, not counted
        monitor.record(_summary(latency))
    s = parse(render(MetricsSnapshot(monitor=monitor.metrics())))
    buckets = [(float(dict(k)["le"]), v) for k, v in s["eyenet_scoring_latency_seconds_bucket"].items()]
    buckets.sort()
    counts = [v for _, v in buckets]
    assert [b for b, _ in buckets] == [*SCORING_LATENCY_BUCKETS_S, float("inf")]
    assert counts == sorted(counts)  # cumulative: never falls
    assert counts[-1] == value(s, "eyenet_scoring_latency_seconds_count") == len(latencies_ms)
    assert value(s, "eyenet_scoring_latency_seconds_sum") == pytest.approx(sum(latencies_ms) / 1000)
    assert dict(buckets)[0.001] == 2  # le: a value equal to the bound is in its bucket
    assert dict(buckets)[10.0] == 5


# -- a real collector's counts ---------------------------------------------------------------------
class GarbageSource(Source):
    """Two devices, one fetch of samples with a negative value, a duplicate and an empty row."""

    name, interval_s = "garbage", 1.0

    def devices(self) -> list[str]:
        return ["g1", "g2"]

    def now_ms(self) -> int:
        return int((T0 + 10) * 1000)

    def fetch(self, device_ids: Sequence[str], since_ms: int, until_ms: int) -> FetchResult:
        ts = [pd.Timestamp(T0 + i, unit="s", tz="UTC") for i in (1, 2, 2, 3, 4)]
        return FetchResult(pd.DataFrame({
            "device_id": ["g1", "g1", "g1", "g2", "g2"], "timestamp": ts,
            "bytes_in": [10.0, 11.0, 11.0, 5.0, None], "latency": [1.0, -2.0, -2.0, 3.0, None]}))


def test_a_real_collectors_counts_are_exported_by_reason(tmp_path):
    config = EyeNetConfig(metrics=["bytes_in", "latency"], counter_metrics=[])
    collector = Collector(config, GarbageSource(), open_store(f"sqlite:///{tmp_path}/c.db"), ["g1", "g2"],
                          "garbage-0", start_ms=int(T0 * 1000), now_s=lambda: T0 + 10)
    collector.poll()
    stats = collector.stats()
    assert stats["repaired"] and stats["rejected"]  # the source's garbage exercised both
    s = parse(render(MetricsSnapshot(collectors={"garbage-0": stats})))
    for family, key in (("eyenet_collector_samples_repaired_total", "repaired"),
                        ("eyenet_collector_samples_rejected_total", "rejected")):
        exported = {f"{dict(k)['reason']}:{dict(k)['metric']}".rstrip(":"): v for k, v in s[family].items()}
        assert exported == stats[key]
    stored = value(s, "eyenet_collector_samples_stored_total", collector="garbage-0")
    assert stored == stats["totals"]["stored"] > 0


# -- the endpoint -----------------------------------------------------------------------------
@pytest.fixture
def setup(tmp_path, detector):
    cfg, store, mv, _ = promoted_store(tmp_path, detector)
    return cfg, store, InferenceService(detector, mv.version, cfg.sample_interval_s, store)


def _client(backend, api_key="", admin_key="") -> TestClient:
    return TestClient(create_app(backend, api_key=api_key, admin_key=admin_key))


def test_metrics_endpoint_exports_every_part(setup, tmp_path):
    cfg, store, service = setup
    monitor = _monitor(tmp_path, Clock(T0))
    monitor.record(_summary(device_counts={"r1": 3}, scores={"r1": 0.2}, thresholds={"r1": 0.8}))
    collector = Collector(EyeNetConfig(metrics=["bytes_in", "latency"], counter_metrics=[]), GarbageSource(),
                          store, ["g1", "g2"], "garbage-0", start_ms=int(T0 * 1000), now_s=lambda: T0 + 10)
    collector.poll()
    backend = LocalBackend(cfg, store, service, monitor=monitor, collectors=[collector])
    response = _client(backend).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    s = parse(response.text)
    assert value(s, "eyenet_production_model_version", model=DEFAULT_MODEL_NAME) == 1
    assert value(s, "eyenet_device_anomaly_score", device="r1") == 0.2
    assert value(s, "eyenet_collector_up", collector="garbage-0") == 1
    assert {dict(k)["component"]: v for k, v in s["eyenet_component_up"].items()} == dict.fromkeys(
        ("monitor", "collectors", "store", "registry"), 1.0)


class _Broken:
    name = "broken-0"

    def metrics(self) -> dict:
        raise RuntimeError("monitor actor died")

    def stats(self) -> dict:
        raise RuntimeError("collector actor died")


def test_a_part_that_is_down_is_exported_as_down_never_a_500(setup):
    cfg, store, service = setup
    store.upsert_event(Event(kind="drift", message="m", status="open", payload={"subject": "cpu"}))
    backend = LocalBackend(cfg, store, service, monitor=_Broken(), collectors=[_Broken()])
    response = _client(backend).get("/metrics")
    assert response.status_code == 200
    s = parse(response.text)
    assert value(s, "eyenet_component_up", component="monitor") == 0
    assert value(s, "eyenet_collector_up", collector="broken-0") == 0
    assert value(s, "eyenet_open_alerts", kind="drift") == 1  # the monitor's last word, from the store
    assert value(s, "eyenet_production_model_version", model=DEFAULT_MODEL_NAME) == 1

    def unreachable(*_a, **_k):
        raise StoreConnectionError("store is down")

    store.ping = store.list_events = store.get_registry_state = unreachable
    s = parse(_client(LocalBackend(cfg, store, service)).get("/metrics").text)
    assert {dict(k)["component"]: v for k, v in s["eyenet_component_up"].items()} == {
        "monitor": 0, "collectors": 1, "store": 0, "registry": 0}
    assert "eyenet_open_alerts" not in s and "eyenet_production_model_version" not in s


def test_metrics_needs_no_key_accepts_a_right_one_and_refuses_a_wrong_one(setup):
    cfg, store, service = setup
    api = _client(LocalBackend(cfg, store, service), api_key=KEY, admin_key="admin-key")
    assert api.get("/v1/models").status_code == 401  # the API itself is guarded
    assert api.get("/metrics").status_code == 200
    for key in (KEY, "admin-key"):
        assert api.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    wrong = api.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["field"] == "Authorization"
    body = api.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert KEY not in body and "admin-key" not in body


class _Handle:
    """A Ray actor handle stand-in: ``handle.method.remote()`` returns an awaitable."""

    def __init__(self, **methods) -> None:
        for name, answer in methods.items():
            setattr(self, name, type("Method", (), {"remote": staticmethod(answer)})())


async def _answer(value):
    return value


def test_the_serve_ingress_gathers_from_the_cluster_and_survives_parts_down(setup, tmp_path, monkeypatch):
    """IngressBackend without Ray: the cluster's lookups are replaced, a collector that never
    answers is down within the (shortened) timeout, the others are exported."""
    import ray
    import ray.util

    import actors.monitor
    from serve_app import deployments

    cfg, _, _ = setup
    monitor = _monitor(tmp_path, Clock(T0))
    monitor.record(_summary(device_counts={"r1": 3}, scores={"r1": 0.4}, thresholds={"r1": 0.8}))
    never = lambda: asyncio.get_running_loop().create_future()  # noqa: E731 - an answer that never comes
    handles = {"eyenet-collector-sim-0-run1": _Handle(stats=lambda: _answer({"totals": {"stored": 9}})),
               "eyenet-collector-sim-1-run1": _Handle(stats=never)}
    named = [{"name": n, "namespace": "eyenet"} for n in handles] + [{"name": "x", "namespace": "eyenet"}]
    monkeypatch.setattr(ray.util, "list_named_actors", lambda all_namespaces=False: named)
    monkeypatch.setattr(ray, "get_actor", lambda name, namespace=None: handles[name])
    found = _Handle(metrics=lambda: _answer(monitor.metrics()))
    monkeypatch.setattr(actors.monitor, "find_monitor", lambda: found)
    monkeypatch.setattr(deployments, "METRICS_TIMEOUT_S", 0.05)
    backend = deployments.IngressBackend(cfg, None)
    s = parse(asyncio.run(backend.metrics_text()))
    assert {dict(k)["collector"]: v for k, v in s["eyenet_collector_up"].items()} == {"sim-0-run1": 1,
                                                                                      "sim-1-run1": 0}
    assert value(s, "eyenet_collector_samples_stored_total", collector="sim-0-run1") == 9
    assert value(s, "eyenet_device_anomaly_score", device="r1") == 0.4
    assert value(s, "eyenet_component_up", component="monitor") == 1

    def unreachable(**_kw):
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(ray.util, "list_named_actors", unreachable)
    backend._monitor_handle = _Handle(metrics=unreachable)  # the actor died since the last scrape
    s = parse(asyncio.run(backend.metrics_text()))
    assert {dict(k)["component"]: v for k, v in s["eyenet_component_up"].items()} == {
        "monitor": 0, "collectors": 0, "store": 1, "registry": 1}
    assert backend._monitor_handle is None  # looked up afresh next scrape
    assert not ray.is_initialized()
