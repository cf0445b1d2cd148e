"""The users' first way of working, for real: jobs submitted with ``ray job submit
--working-dir .`` to the suite's cluster (through its dashboard address, as a user talks
to a cluster), then the API they deployed asked with ``eyenet predict``. A submitted
training job is in test_cluster_autoscaling (on a cluster started with ``ray start
--head``, as a user starts one)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from jobs.cli import main
from tests.helpers import free_port, wait_for
from tests.ray_jobs import job_status, submit
from tests.synthetic import METRICS, telemetry


@pytest.fixture
def cluster_config(tmp_path):
    """A config file as a user would keep one, and a device's history."""
    config = {"store_uri": f"sqlite:///{tmp_path}/eyenet.db", "artifact_root": str(tmp_path / "artifacts"),
              "metrics": METRICS, "counter_metrics": [],
              "detector": {"window_steps": 8, "hidden_size": 8, "num_layers": 1, "max_epochs": 2,
                           "max_train_time_s": 30, "learning_rate": 0.01}}
    path = tmp_path / "eyenet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config, telemetry(600, devices=("r1",))


def test_submitted_jobs_promote_deploy_and_answer(ray_cluster, cluster_config):
    from ray import serve

    from serve_app.deployments import APP_NAME

    address = f"http://{ray_cluster.dashboard_url}"
    path, config, history = cluster_config
    # a submitted `jobs.train` and the staging version it registers: test_cluster_autoscaling
    store = open_store(config["store_uri"])
    cfg = EyeNetConfig.from_dict(config)
    Detector(cfg.detector, cfg.metrics, cfg.gap_s).fit(history).save(path.parent / "model")
    ModelRegistry(store, config["artifact_root"]).register(path.parent / "model")

    promoted, _ = submit(address, "jobs.models", "promote", "1", "--skip-gate", "--config", str(path))
    assert promoted.returncode == 0 and "v1 is now production" in promoted.stdout, promoted.stdout[-2000:]
    live = history.tail(60)  # the live window /v1/predict reads
    store.write_samples(live.assign(label=pd.array([None] * len(live), dtype="Int8")))
    port = free_port()
    deployed, job_id = submit(address, "jobs.deploy", "--config", str(path), "--host", "127.0.0.1",
                              "--port", str(port))
    try:
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        assert job_status(address, job_id) == "SUCCEEDED"
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: main(["predict", "r1", "--url", url, "--json", "--config", str(path)]) == 0,
                 120, "the deployed API to answer")
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()


def test_a_failing_job_reaches_the_submitter_with_its_status_and_error(ray_cluster, cluster_config):
    address = f"http://{ray_cluster.dashboard_url}"
    path, _, _ = cluster_config
    failed, job_id = submit(address, "jobs.train", "--config", str(path), "--train-csv", "/nonexistent/x.csv")
    assert failed.returncode != 0
    assert job_status(address, job_id) == "FAILED"
    assert "eyenet: error: /nonexistent/x.csv: no such file" in failed.stdout + failed.stderr
