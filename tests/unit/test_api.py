"""The HTTP API over an in-process backend (no Ray): predictions match the detector,
bad input gets a 4xx naming the field, auth refuses missing or wrong keys."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import EyeNetError, RequestError, StoreConnectionError
from eyenet.serving.inference import InferenceService, ScoreRequest, predict_devices
from eyenet.store import Event, open_store
from serve_app.api import create_app
from serve_app.local import LocalBackend
from tests.synthetic import METRICS, config, promoted_store, telemetry

KEY = "s3cret-key"
ADMIN = "adm1n-key"


@pytest.fixture
def setup(tmp_path, detector):
    cfg, store, mv, live = promoted_store(tmp_path, detector)
    store.upsert_event(Event(kind="anomaly", message="m", device_id="r1", metrics=["cpu"]))
    backend = LocalBackend(cfg, store, InferenceService(detector, mv.version, cfg.sample_interval_s, store))
    return cfg, store, backend, live


def client(backend, api_key=None, max_body_bytes=1_000_000, admin_key=None) -> TestClient:
    return TestClient(create_app(backend, max_body_bytes=max_body_bytes, api_key=api_key or "",
                                 admin_key=admin_key or ""))


def window_body(frame: pd.DataFrame, device="w1") -> dict:
    return {"device_id": device, "timestamps": [t.isoformat() for t in frame["timestamp"]],
            "values": frame[METRICS].to_numpy().tolist()}


def test_score_matches_the_in_process_detector(setup, detector):
    _, _, backend, _ = setup
    frames = [telemetry(40, start_s=9000, seed=s, devices=("w1",)) for s in (1, 2)]
    frames[1].loc[35:, "latency"] += 50  # a spike at the end of the second window
    response = client(backend).post("/v1/score", json={"windows": [window_body(f) for f in frames]})
    assert response.status_code == 200, response.text
    body = response.json()
    for frame, prediction in zip(frames, body, strict=True):
        want = detector.score(frame).iloc[-1]
        assert prediction["anomaly_score"] == pytest.approx(want["score"], abs=1e-6)
        assert prediction["is_anomaly"] == bool(want["is_anomaly"])
        assert prediction["top_features"] == want["top_features"]
        assert prediction["model_version"] == 1
    assert body[1]["anomaly_score"] > body[0]["anomaly_score"]


def test_predict_scores_the_stored_live_window(setup, detector):
    _, _, backend, live = setup
    response = client(backend).post("/v1/predict", json={"device_id": "r1"})
    assert response.status_code == 200, response.text
    rows = backend.service.min_rows + detector.config.smoothing
    want = detector.score(live.tail(rows)).iloc[-1]
    got = response.json()
    assert set(got) == {"device_id", "is_anomaly", "anomaly_score", "threshold", "model_version",
                        "timestamp", "top_features", "state"}
    assert got["state"] == "judged"  # r1 is a trained device
    assert got["anomaly_score"] == pytest.approx(want["score"], abs=1e-6)
    assert pd.Timestamp(got["timestamp"]) == live["timestamp"].iloc[-1]


def test_live_windows_come_from_the_collectors_when_they_hold_them(setup, detector):
    """A device whose whole window the collectors hold is scored from it (even one the
    store has never seen); the others from the store; a short buffer falls back to it."""
    _, _, backend, live = setup
    rows = backend.windows.rows
    held = telemetry(rows, start_s=7000, seed=9, devices=("only-live",))
    short = live.tail(5)[["device_id", "timestamp", *METRICS]]  # r1: too few held
    results, _ = predict_devices(backend.service, backend.windows, ["only-live", "r1", "ghost"],
                                 pd.concat([held, short], ignore_index=True))
    assert results[0]["anomaly_score"] == pytest.approx(detector.score(held).iloc[-1]["score"], abs=1e-6)
    stored = detector.score(live.tail(rows)).iloc[-1]
    assert results[1]["anomaly_score"] == pytest.approx(stored["score"], abs=1e-6)
    assert pd.Timestamp(results[1]["timestamp"]) == live["timestamp"].iloc[-1]
    assert isinstance(results[2], RequestError) and results[2].status == 404


def test_read_endpoints(setup):
    _, _, backend, _ = setup
    c = client(backend)
    assert c.get("/v1/health").json() == {"ok": True, "store": "ok", "production_model": 1}
    assert [m["state"] for m in c.get("/v1/models").json()] == ["production"]
    assert c.get("/v1/devices").json()[0]["device_id"] == "r1"
    assert c.get("/v1/devices").json()[0]["state"] == "judged"  # a trained device
    assert c.get("/v1/anomalies", params={"device_id": "r1"}).json()[0]["metrics"] == ["cpu"]
    assert c.get("/v1/report", params={"since": "2h"}).json()["kind"] == "report"
    assert "/v1/score" in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("path, params, field", [
    ("/v1/report", {"since": "UTC"}, "since"),            # was a 503: a caller's error
    ("/v1/anomalies", {"limit": "0"}, "limit"),
    ("/v1/models/9223372036854775808/promote", None, "version"),  # was a 500 (SQLite overflow)
])
def test_bad_parameters_get_a_4xx_naming_them(setup, path, params, field):
    _, _, backend, _ = setup
    c = client(backend)
    response = c.post(path) if path.endswith("promote") else c.get(path, params=params)
    assert 400 <= response.status_code < 500, response.text
    assert field in (response.json()["field"] or "") + response.json()["detail"]


def test_health_says_what_is_missing(tmp_path, detector):
    cfg = EyeNetConfig(metrics=METRICS, counter_metrics=[], store_uri=f"sqlite:///{tmp_path}/e.db",
                       artifact_root=str(tmp_path / "a"))
    backend = LocalBackend(cfg, open_store(cfg.store_uri), InferenceService(detector, None))
    response = client(backend).get("/v1/health")
    assert response.status_code == 503 and response.json()["production_model"] == "none"


@pytest.mark.parametrize("mutate, status, field", [
    (lambda b: b.pop("windows"), 422, "windows"),
    (lambda b: b.update(windows=[]), 422, "windows"),
    (lambda b: b["windows"][0].update(values="x"), 422, "windows[0].values"),
    (lambda b: b["windows"][0]["values"][3].pop(), 422, "windows[0].values[3]"),
    (lambda b: b["windows"][0]["values"].__setitem__(slice(5, None), []), 422, "windows[0].values"),
    (lambda b: b["windows"][0]["values"][2].__setitem__(1, float("nan")), 422, "windows[0].values[2][1]"),
    (lambda b: b["windows"][0]["values"][2].__setitem__(0, float("inf")), 422, "windows[0].values[2][0]"),
    (lambda b: b["windows"][0].update(metrics=["cpu", "memory", "disk"]), 422, "windows[0].metrics"),
    (lambda b: b["windows"][0]["timestamps"].__setitem__(4, "noon-ish"), 422, "windows[0].timestamps[4]"),
    (lambda b: b["windows"][0]["timestamps"].reverse(), 422, "windows[0].timestamps"),
])
def test_bad_score_bodies_get_a_4xx_naming_the_field(setup, mutate, status, field):
    _, _, backend, _ = setup
    body = {"windows": [window_body(telemetry(20, start_s=9000, devices=("w1",)))]}
    mutate(body)
    response = client(backend).post("/v1/score", content=json.dumps(body),
                                    headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


def test_malformed_json_unknown_device_and_oversized_body(setup):
    _, _, backend, _ = setup
    c = client(backend, max_body_bytes=2048)
    bad = c.post("/v1/score", content=b'{"windows": [', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["field"] == "body"
    unknown = c.post("/v1/predict", json={"device_id": "nobody"})
    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
    assert c.post("/v1/predict", json={"device_id": 5}).status_code == 422
    assert c.post("/v1/predict", json={}).json()["field"] == "device_id"
    big = c.post("/v1/score", content=b"x" * 4096, headers={"content-type": "application/json"})
    assert big.status_code == 413
    # a chunked body has no Content-Length: it is counted as it arrives
    streamed = c.post("/v1/score", content=iter([b"x" * 1024] * 4),
                      headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["field"] == "body"
    assert c.get("/v1/anomalies", params={"limit": 0}).json()["field"] == "limit"


def test_api_key_is_required_everywhere_but_health(setup):
    _, _, backend, _ = setup
    c = client(backend, api_key=KEY)
    assert c.get("/v1/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        refused = c.post("/v1/predict", json={"device_id": "r1"}, headers=headers)
        assert refused.status_code == 401 and KEY not in refused.text
        assert c.get("/v1/models", headers=headers).status_code == 401
    ok = c.post("/v1/predict", json={"device_id": "r1"}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_the_key_comes_from_the_environment(setup, monkeypatch):
    _, _, backend, _ = setup
    monkeypatch.setenv("EYENET_API_KEY", KEY)
    c = TestClient(create_app(backend))
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert np.isfinite(c.post("/v1/predict", json={"device_id": "r1"},
                              headers={"Authorization": f"Bearer {KEY}"}).json()["anomaly_score"])


def test_promote_and_rollback_endpoints(setup, detector, tmp_path):
    _, _, backend, _ = setup
    c = client(backend, api_key=KEY, admin_key=ADMIN)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert c.post("/v1/models/2/promote").status_code == 401
    assert c.post("/v1/models/7/promote", headers=auth).status_code == 404
    assert c.post("/v1/models/1/promote", headers=auth).status_code == 409  # already production
    backend.registry.register(detector.save(tmp_path / "v2"))
    promoted = c.post("/v1/models/2/promote", headers=auth)
    assert promoted.status_code == 200 and promoted.json()["state"] == "production"
    assert promoted.json()["gate_report"]["replayed_points"] > 0
    back = c.post("/v1/models/rollback", headers=auth)
    assert back.status_code == 200 and back.json()["version"] == 1


def test_a_read_only_key_cannot_change_the_production_model(setup):
    _, _, backend, _ = setup
    reader = {"Authorization": f"Bearer {KEY}"}
    for admin_key in (None, ADMIN):  # without an admin key configured, nobody may promote over HTTP
        c = client(backend, api_key=KEY, admin_key=admin_key)
        for path in ("/v1/models/1/promote", "/v1/models/rollback"):
            refused = c.post(path, headers=reader)
            assert refused.status_code == 403, refused.text
            assert "admin key" in refused.json()["detail"] and KEY not in refused.text
        assert c.get("/v1/models", headers=reader).status_code == 200  # reading still works
    wrong = client(backend, api_key=KEY, admin_key=ADMIN).post(
        "/v1/models/rollback", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and ADMIN not in wrong.text


def test_a_failed_gate_is_a_409_with_its_reasons(setup, tmp_path):
    _, _, backend, _ = setup
    noisy = Detector(config(device_thresholds={"r1": 0.01}), METRICS, gap_s=3.0).fit(telemetry(400))
    backend.registry.register(noisy.save(tmp_path / "noisy"))
    response = client(backend).post("/v1/models/2/promote")
    assert response.status_code == 409 and "alert rate" in response.json()["reasons"][0]
    assert backend.registry.get(backend.model_name, 2).state == "staging"


def test_the_serve_config_yaml_is_valid_for_serve_deploy():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[2] / "serve_app" / "serve_config.yaml"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert schema.applications[0].import_path == "serve_app.deployments:app_builder"


def test_eyenet_serve_refuses_without_a_production_model(tmp_path, capsys):
    from jobs.cli import main

    code = main(["serve", "--store", f"sqlite:///{tmp_path}/e.db", "--artifact-root", str(tmp_path / "a"),
                 "--port", "8123"])
    assert code == 1 and "no production model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "deploy"])
def test_serving_beyond_loopback_needs_a_key_or_insecure(tmp_path, capsys, monkeypatch, command):
    from jobs.cli import main

    monkeypatch.delenv("EYENET_API_KEY", raising=False)
    where = ["--store", f"sqlite:///{tmp_path}/e.db", "--artifact-root", str(tmp_path / "a"),
             "--port", "8123"]
    assert main([command, "--host", "0.0.0.0", *where]) == 2
    err = capsys.readouterr().err
    assert "serving on 0.0.0.0, beyond loopback, without EYENET_API_KEY" in err and "--insecure" in err
    # past the check (which runs before anything starts), on to the next: no model yet
    assert main([command, "--host", "0.0.0.0", "--insecure", *where]) == 1
    assert "no production model" in capsys.readouterr().err
    monkeypatch.setenv("EYENET_API_KEY", "k")
    assert main([command, "--host", "0.0.0.0", *where]) == 1
    assert "no production model" in capsys.readouterr().err


def test_a_detector_replica_is_unhealthy_without_its_store_or_a_production_model(tmp_path, detector):
    """Serve replaces a replica whose check_health raises: with no production model (unless
    the replica is pinned to a version) and with the store unreachable."""
    from serve_app.deployments import DetectorReplica

    cfg, store, mv, _ = promoted_store(tmp_path, detector, registry_poll_interval_s=3600)
    replica = DetectorReplica(cfg.to_dict())  # a plain object here: no Ray needed
    try:
        replica.check_health()
        state, rev = store.get_registry_state(mv.name)
        assert store.compare_and_set_registry_state(mv.name, rev, {**state, "production": None})
        with pytest.raises(EyeNetError, match="no production model"):
            replica.check_health()
        replica.reconfigure({"model_version": mv.version})  # pinned: it has its model
        replica.check_health()
        store.close()
        replica.store.close()
        path = Path(cfg.store_uri.removeprefix("sqlite:///"))
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        path.mkdir()  # the database file is now something SQLite cannot open
        with pytest.raises(StoreConnectionError):
            replica.check_health()
    finally:
        replica._stop.set()


def test_the_api_key_never_appears_in_responses_or_logs(setup, caplog):
    _, _, backend, _ = setup
    c = client(backend, api_key=KEY)
    caplog.set_level(logging.DEBUG)
    wrong = KEY[::-1]
    good, bad = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {wrong}"}
    answers = [c.post("/v1/predict", json={"device_id": "r1"}, headers=bad),
               c.post("/v1/predict", json={"device_id": "r1"}, headers=good),
               c.post("/v1/predict", json={"device_id": "nobody"}, headers=good),
               c.post("/v1/score", content=b"{", headers=good),
               c.get("/v1/models", headers={"Authorization": KEY}),
               c.get("/v1/health")]
    assert [a.status_code for a in answers] == [401, 200, 404, 400, 401, 200]
    for secret in (KEY, wrong):
        assert not any(secret in a.text for a in answers)
        assert secret not in caplog.text


def test_a_detector_replica_refuses_windows_checked_against_another_model(tmp_path, detector):
    """The ingress checks windows against what ``describe`` says; a replica that has since
    switched to a model with other metrics or a longer window refuses (409), not fails."""
    import asyncio

    from eyenet.serving.inference import CheckedWindows
    from serve_app.deployments import DetectorReplica

    cfg, _, mv, _ = promoted_store(tmp_path, detector, registry_poll_interval_s=3600)
    replica = DetectorReplica(cfg.to_dict())
    try:
        described = replica.describe()
        assert described == {"metrics": METRICS, "min_rows": detector.config.window_steps + 1,
                             "model_version": mv.version}
        rows = described["min_rows"]
        wide = CheckedWindows(["w"], [rows], np.arange(rows, dtype=np.int64) * 1000,
                              np.zeros((rows, len(METRICS) + 1)))
        short = CheckedWindows(["w"], [rows - 1], np.arange(rows - 1, dtype=np.int64) * 1000,
                               np.zeros((rows - 1, len(METRICS))))
        for checked in (wide, short):
            refused = asyncio.run(replica.score(checked))
            assert refused["refused"]["status"] == 409 and "retry" in refused["refused"]["message"]
    finally:
        replica._stop.set()


def test_a_device_the_model_never_saw_is_learning_until_the_pool_has_learned_its_scale(tmp_path, detector):
    """/v1/score and /v1/predict say 'learning' (and never alert) for an unseen device, and
    judge it in its own scale once the feature pool has saved what it learned."""
    from eyenet.detection.device_scaling import DeviceStats
    from eyenet.detection.device_state import save_device_state
    from eyenet.detection.features import Scaler

    cfg, store, mv, _ = promoted_store(tmp_path, detector)
    service = InferenceService(detector, mv.version, cfg.sample_interval_s, store)
    frame = telemetry(60, start_s=900, devices=("stranger",))
    frame.loc[frame.index[-3:], "latency"] += 100.0           # an obvious spike at the end
    window = window_body(frame, device="stranger")
    first = service.score(ScoreRequest(windows=[window]))[0]
    assert first["state"] == "learning" and not first["is_anomaly"]
    # the pool learned the device's scale: the training fleet's, as this device is like them
    fleet = detector.scaling.fleet
    save_device_state(store, "stranger", detector.feature_names,
                 DeviceStats(Scaler(fleet.center.copy(), fleet.scale.copy()), 1))
    later = InferenceService(detector, mv.version, cfg.sample_interval_s, store).score(
        ScoreRequest(windows=[window]))[0]
    assert later["state"] == "judged" and later["is_anomaly"]


def test_a_devices_own_threshold_decides_its_served_predictions(tmp_path, detector):
    """Regression: Serve scores each window under a key of its own (index and device), and
    the decision rule looked those keys up instead of the device, so every window was
    judged at the fleet's 0.5: a loud demo device with its own 0.60 was flagged by
    /v1/predict on its normal noise and the monitor opened a device alert for it."""
    loud = copy.deepcopy(detector)
    loud.rule.devices = {"r1": 0.999, "r2": 0.001}
    cfg, store, mv, _ = promoted_store(tmp_path, loud)
    backend = LocalBackend(cfg, store, InferenceService(loud, mv.version, cfg.sample_interval_s, store))
    http = client(backend)
    predicted = http.post("/v1/predict", json={"device_id": "r1"}).json()
    assert predicted["threshold"] == 0.999 and not predicted["is_anomaly"]
    frame = telemetry(40, start_s=9000, seed=1, devices=("r2",))
    scored = http.post("/v1/score", json={"windows": [window_body(frame, "r2")]}).json()[0]
    assert scored["threshold"] == 0.001 and scored["state"] == "judged"
    assert scored["anomaly_score"] > 0.001 and scored["is_anomaly"]
