"""Everything that scores follows the registry's production model, in place: the feature
pool, the Serve replicas and the monitor's drift reference switch on a promotion and
back on a rollback, with nothing failing and nothing restarted.

The monitor is started before any model exists (as a collect-only pipeline starts it),
which is the case that used to keep it without a drift reference forever.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from tests.helpers import free_port, wait_for
from tests.synthetic import DEVICES, SEED, make_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

POLL_S = 0.5


def register(registry: ModelRegistry, model_dir: Path, copy: Path) -> int:
    shutil.copytree(model_dir, copy)  # a version of its own, same weights: what switches is the version
    return registry.register(copy).version



def test_pool_replicas_and_monitor_follow_a_promotion_and_a_rollback(tmp_path, trained_model):
    import ray
    from ray import serve

    from actors.monitor import find_monitor, get_monitor
    from actors.pipeline import start_pipeline
    from serve_app.deployments import APP_NAME, build_app

    config = make_config(tmp_path, registry_poll_interval_s=POLL_S,
                         monitor={"check_interval_s": POLL_S, "min_drift_samples": 1},
                         serve={"min_replicas": 1, "max_replicas": 1})
    monitor = get_monitor(config)  # before any model exists: no drift reference yet
    assert ray.get(monitor.stats.remote())["model_version"] is None
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    v1 = register(registry, trained_model[0], tmp_path / "v1")
    registry.promote("eyenet-detector", v1)
    now_s = time.time()
    pipeline = start_pipeline(config, "simulated", {"devices": DEVICES, "seed": SEED, "origin_wall_s": now_s},
                              start_ms=int(now_s * 1000) - 120_000)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []

    def pool_on(version: int) -> bool:
        stats = pipeline.stats()["feature_actors"]
        return all(s["model_version"] == version for s in stats)

    def pool_scores_on(version: int, after: int) -> bool:
        # samples scored since the switch: the pool scores with the new model, not just loads it
        stats = pipeline.stats()
        return pool_on(version) and stats["scored"] > after

    def replica_on(version: int) -> bool:
        answer = httpx.post(f"{url}/v1/predict", json={"device_id": "dev-0001"}, timeout=60)
        answers.append(answer)
        return answer.status_code == 200 and answer.json()["model_version"] == version

    def monitor_drift_on(version: int) -> bool:
        stats = ray.get(monitor.stats.remote())
        # a fresh drift window against this version's reference, and summaries counted in it
        return stats["model_version"] == version and sum(stats["drift_samples"].values()) > 0

    try:
        wait_for(lambda: pool_scores_on(v1, 0), 120, "the pool to score on v1")
        wait_for(lambda: monitor_drift_on(v1), 60,
                 "the monitor's drift to follow v1 (promoted after it started)")
        wait_for(lambda: replica_on(v1), 60, "replicas to answer on v1")

        v2 = register(registry, trained_model[0], tmp_path / "v2")
        registry.promote("eyenet-detector", v2)
        scored = pipeline.stats()["scored"]
        wait_for(lambda: pool_scores_on(v2, scored), 60, "the pool to score on v2")
        wait_for(lambda: replica_on(v2), 60, "replicas to answer on v2")
        wait_for(lambda: monitor_drift_on(v2), 60, "the monitor's drift to follow v2")

        registry.rollback("eyenet-detector")
        scored = pipeline.stats()["scored"]
        wait_for(lambda: pool_scores_on(v1, scored), 60, "the pool to score on v1 after the rollback")
        wait_for(lambda: replica_on(v1), 60, "replicas to answer on v1 after the rollback")
        wait_for(lambda: monitor_drift_on(v1), 60, "the monitor's drift to follow the rollback")

        stats = pipeline.stats()
        assert [a.status_code for a in answers if a.status_code != 200] == [], [a.text for a in answers]
        for actor in stats["feature_actors"]:
            assert actor["follower"]["errors"] == 0 and actor["monitor_errors"] == 0, actor
        for collector in stats["collectors"]:
            assert not collector["totals"].get("store_errors") and not collector["source_error"], collector
        follower = ray.get(monitor.stats.remote())["follower"]
        assert follower["errors"] == 0 and follower["switches"] == 3, follower
    finally:
        pipeline.stop()
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.kill(monitor, no_restart=True)
        wait_for(lambda: find_monitor() is None, 30, "the monitor to go")
