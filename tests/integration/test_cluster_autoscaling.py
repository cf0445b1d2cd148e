"""The users' third way of working, simulated faithfully: a cluster with cluster.yaml's
node types (CPU head, GPU and CPU worker types starting at zero) whose real autoscaler
launches a GPU node when a submitted training job asks for a GPU, and removes it once idle.

Simulated (see tests/fake_cluster.py): the nodes are raylets on this machine and the GPU
node's GPU is a resource label, so the training worker finds no CUDA device there and falls
back to the CPU, which is what `--gpus` does on a node without a usable GPU."""

from __future__ import annotations

import pytest
import yaml

from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from tests.fake_cluster import FakeAutoscalingCluster
from tests.helpers import wait_for
from tests.ray_jobs import REPO, job_status, submit
from tests.synthetic import METRICS, telemetry

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_cluster(tmp_path):
    cluster = FakeAutoscalingCluster(REPO / "cluster.yaml", tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_a_gpu_training_job_launches_a_gpu_node_completes_and_the_idle_node_goes(fake_cluster, tmp_path):
    types = fake_cluster.config["available_node_types"]
    assert types["ray.worker.gpu"]["resources"] == {"CPU": 4, "GPU": 1}
    assert types["ray.worker.gpu"]["min_workers"] == 0
    wait_for(lambda: fake_cluster.alive_nodes() == {"head": 1}, 60, "the head alone, no worker yet")

    # every fake node is this machine, so these paths do reach all of them
    config = {"store_uri": f"sqlite:///{tmp_path}/eyenet.db", "artifact_root": str(tmp_path / "artifacts"),
              "metrics": METRICS, "counter_metrics": [],
              "cluster": {"shared_filesystem": True, "train_storage_path": str(tmp_path / "runs"),
                          "gpu_wait_s": 240},
              "detector": {"window_steps": 8, "hidden_size": 8, "num_layers": 1, "max_epochs": 1,
                           "max_train_time_s": 30, "learning_rate": 0.01}}
    path = tmp_path / "eyenet.yaml"
    path.write_text(yaml.safe_dump(config))
    csv = tmp_path / "history.csv"
    telemetry(400, devices=("r1",)).drop(columns="device_id").to_csv(csv, index=False)

    done, job_id = submit(fake_cluster.dashboard_url, "jobs.train", "--config", str(path),
                          "--train-csv", str(csv), "--gpus", "1", env=fake_cluster.env, timeout_s=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert job_status(fake_cluster.dashboard_url, job_id) == "SUCCEEDED"
    assert "registered eyenet-detector v1 (staging)" in out
    # placed on the launched GPU node, whose "GPU" torch cannot use
    assert "training worker 0 was given cuda:0" in out and "running on the CPU" in out
    versions = ModelRegistry(open_store(config["store_uri"]), config["artifact_root"]).list()
    assert [(v.version, v.state) for v in versions] == [(1, "staging")]

    # idle_timeout_minutes is 0.1 here (cluster.yaml: 5); the autoscaler removes the node
    wait_for(lambda: fake_cluster.alive_nodes() == {"head": 1}, 120, "the idle GPU node to be removed")
