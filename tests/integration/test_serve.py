"""The Serve application over HTTP on the shared local Ray: predictions match the
in-process detector, bad input gets a 4xx, the replica survives it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eyenet.config import DEFAULT_MODEL_NAME, EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from tests.helpers import free_port, wait_for
from tests.synthetic import METRICS, config, promoted_store, telemetry

pytestmark = pytest.mark.usefixtures("ray_cluster")



@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Detector, pd.DataFrame, EyeNetConfig]]:
    from ray import serve

    from serve_app.deployments import APP_NAME, build_app

    tmp = tmp_path_factory.mktemp("serve")
    detector = Detector(config(), METRICS, gap_s=3.0).fit(telemetry(400))
    cfg, _, _, live = promoted_store(tmp, detector,
                                     registry_poll_interval_s=0.5,
                                     serve={"min_replicas": 1, "max_replicas": 1, "max_batch_size": 24,
                                            "batch_wait_timeout_s": 0.004})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}", detector, live, cfg
    serve.delete(APP_NAME)
    serve.shutdown()


def test_http_predictions_match_the_in_process_detector(served):
    url, detector, _, _ = served
    window = telemetry(40, start_s=9000, seed=2, devices=("w1",))
    body = {"windows": [{"device_id": "w1", "timestamps": [t.isoformat() for t in window["timestamp"]],
                         "values": window[METRICS].to_numpy().tolist()}]}
    scored = httpx.post(f"{url}/v1/score", json=body, timeout=60)
    assert scored.status_code == 200, scored.text
    want = detector.score(window).iloc[-1]["score"]
    assert scored.json()[0]["anomaly_score"] == pytest.approx(want, abs=1e-6)
    predicted = httpx.post(f"{url}/v1/predict", json={"device_id": "r1"}, timeout=60)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["model_version"] == 1


def test_a_running_replica_batches_with_the_configured_size_and_wait(served):
    """The settings must be applied inside the replica: it imports this module afresh, so a
    change made to the class in the driver never reaches it."""
    from ray import serve

    from serve_app.deployments import APP_NAME

    _, _, _, cfg = served
    handle = serve.get_deployment_handle("Detector", app_name=APP_NAME)
    want = {"max_batch_size": cfg.serve.max_batch_size,
            "batch_wait_timeout_s": cfg.serve.batch_wait_timeout_s}
    assert handle.batch_settings.remote().result(timeout_s=60) == {"score": want, "predict": want}


def test_bad_input_is_a_4xx_and_the_replica_lives_on(served):
    url, _, _, _ = served
    short = {"windows": [{"values": [[1.0, 2.0, 3.0]]}]}
    response = httpx.post(f"{url}/v1/score", json=short, timeout=60)
    assert response.status_code == 422 and response.json()["field"] == "windows[0].values"
    assert httpx.post(f"{url}/v1/predict", json={"device_id": "nobody"}, timeout=60).status_code == 404
    assert httpx.post(f"{url}/v1/score", content=b"{", headers={"content-type": "application/json"},
                      timeout=60).status_code == 400
    assert httpx.get(f"{url}/v1/health", timeout=60).json()["ok"] is True


def test_requests_keep_succeeding_through_a_promotion_and_a_rollback(served, tmp_path):
    import threading

    from eyenet.models.gates import promotion_gates

    url, detector, _, cfg = served
    registry = ModelRegistry(open_store(cfg.store_uri), cfg.artifact_root)
    window = telemetry(40, start_s=9000, seed=2, devices=("w1",))
    body = {"windows": [{"device_id": "w1", "values": window[METRICS].to_numpy().tolist()}]}
    seen, failures, stop = [], [], threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"{url}/v1/score", json=body)
                (seen.append(r.json()[0]["model_version"]) if r.status_code == 200
                 else failures.append(r.text))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        v2 = registry.register(detector.save(tmp_path / "v2"))
        registry.promote(v2.name, v2.version, promotion_gates(cfg, registry))
        wait_for(lambda: seen and seen[-1] == 2, 60, "replicas to switch to v2")
        registry.rollback(v2.name)
        wait_for(lambda: seen[-1] == 1, 60, "replicas to switch back to v1")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen[-1] == 1 and 2 in seen


def test_request_latency_and_features_reach_the_monitor(served):

    import ray

    from actors.monitor import find_monitor, get_monitor

    url, _, _, cfg = served
    monitor = get_monitor(cfg)
    try:
        window = telemetry(40, start_s=9000, seed=3, devices=("w9",))
        body = {"windows": [{"device_id": "w9", "values": window[METRICS].to_numpy().tolist()}]}

        def recorded() -> bool:
            assert httpx.post(f"{url}/v1/score", json=body, timeout=60).status_code == 200
            return ray.get(monitor.stats.remote())["latency"]["count"] > 0

        # replicas look the monitor up every 10 s
        wait_for(recorded, 90, "the monitor to record request latency", poll_s=0.5)
        # the ingress gathers /metrics from the monitor actor, the store and the registry
        reply = httpx.get(f"{url}/metrics", timeout=30)
        assert reply.status_code == 200
        series = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(reply.text) for s in family.samples}
        assert series[("eyenet_component_up", (("component", "monitor"),))] == 1
        assert series[("eyenet_production_model_version", (("model", DEFAULT_MODEL_NAME),))] == 1
        assert 0 <= series[("eyenet_device_anomaly_score", (("device", "w9"),))] <= 1
        assert series[("eyenet_scored_points_total", (("device", "w9"),))] >= 1
        assert series[("eyenet_scoring_latency_seconds_count", ())] >= 1
    finally:
        ray.kill(monitor, no_restart=True)
        wait_for(lambda: find_monitor() is None, 30, "the monitor to go")
