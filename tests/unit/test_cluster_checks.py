"""What a job asks of the cluster before placing work: settings that reach every node, and
GPUs that exist or are on their way (else CPUs, said out loud)."""

from __future__ import annotations

import itertools

import pytest
import torch

from eyenet.config import EyeNetConfig
from eyenet.detection.networks import usable_device
from eyenet.errors import ConfigError
from jobs import cluster
from jobs.cluster import check_paths_reach_every_node, node_local_settings, usable_gpus

SHARED = {"store_uri": "mongodb://db.internal/eyenet", "artifact_root": "s3://models/eyenet",
          "cluster": {"train_storage_path": "s3://models/train-runs"}}


def test_shared_settings_pass_and_every_node_local_one_is_named():
    assert node_local_settings(EyeNetConfig.from_dict(SHARED)) == []
    found = node_local_settings(EyeNetConfig.from_dict({}))
    assert [f.split(" ")[0] for f in found] == ["store_uri", "artifact_root", "cluster.train_storage_path"]
    assert "sqlite:///eyenet-data/eyenet.db" in found[0] and "mongodb://" in found[0]
    local_storage = EyeNetConfig.from_dict({**SHARED, "cluster": {"train_storage_path": "/data/runs"}})
    assert node_local_settings(local_storage) == [
        "cluster.train_storage_path (/data/runs) is a path on this node; use s3://BUCKET/PREFIX"]


def test_a_shared_filesystem_allows_paths_but_not_an_unset_train_storage():
    config = EyeNetConfig.from_dict({"cluster": {"shared_filesystem": True}})
    assert [f.split(" ")[0] for f in node_local_settings(config)] == ["cluster.train_storage_path"]
    config = EyeNetConfig.from_dict({"cluster": {"shared_filesystem": True,
                                                 "train_storage_path": "/nfs/runs"}})
    assert node_local_settings(config) == []


def test_several_nodes_refuse_node_local_settings_one_node_warns(capsys):
    with pytest.raises(ConfigError, match=r"3 nodes.*store_uri \(sqlite.*artifact_root.*shared_filesystem"):
        check_paths_reach_every_node(EyeNetConfig.from_dict({}), alive_nodes=3)
    check_paths_reach_every_node(EyeNetConfig.from_dict({}), alive_nodes=1)
    assert "warning: if this cluster adds nodes" in capsys.readouterr().out
    check_paths_reach_every_node(EyeNetConfig.from_dict(SHARED), alive_nodes=3)
    assert capsys.readouterr().out == ""


class FakeCluster:
    """GPUs appear after ``gpu_after`` polls; the autoscaler reports ``launching`` per update."""

    def __init__(self, gpus: float = 0.0, gpu_after: int | None = None, launching: bool = False) -> None:
        self._gpus, self.gpu_after, self.launching = gpus, gpu_after, launching
        self.polls, self.requests = 0, []
        self.clock = itertools.count(start=2_000_000_000)

    def gpus(self) -> float:
        self.polls += 1
        if self.gpu_after is not None and self.polls > self.gpu_after:
            return 1.0
        return self._gpus

    def request(self, bundles):
        self.requests.append(bundles)

    def autoscaler_update(self):
        return float(next(self.clock)), self.launching


@pytest.fixture(autouse=True)
def no_poll_wait(monkeypatch):
    monkeypatch.setattr(cluster, "POLL_S", 0.0)


def test_gpus_the_cluster_has_are_used_without_asking():
    fake = FakeCluster(gpus=2.0)
    assert usable_gpus(2, 600, started_here=False, cluster=fake).gpus == 2
    assert fake.requests == []
    assert usable_gpus(0, 600, started_here=False, cluster=FakeCluster()).gpus == 0


def test_a_ray_started_here_without_gpus_falls_back_at_once(capsys):
    fake = FakeCluster()
    got = usable_gpus(1, 600, started_here=True, cluster=fake)
    assert got.gpus == 0 and "no GPU Ray can see" in got.reason
    assert "warning: 1 GPU(s) asked for" in capsys.readouterr().out
    assert fake.requests == []


def test_a_gpu_node_the_autoscaler_launches_is_waited_for_and_the_request_withdrawn():
    fake = FakeCluster(gpu_after=20, launching=True)
    got = usable_gpus(1, 600, started_here=False, cluster=fake)
    assert got.gpus == 1 and got.reason == "a GPU node joined"
    assert fake.requests == [[{"GPU": 1.0}], []]


def test_an_autoscaler_that_launches_nothing_means_cpus(capsys):
    fake = FakeCluster(launching=False)
    got = usable_gpus(2, 600, started_here=False, cluster=fake, what="the detector replicas")
    assert got.gpus == 0 and "launches no GPU node" in got.reason
    assert "the detector replicas runs on CPUs" in capsys.readouterr().out
    assert fake.requests[-1] == []


def test_the_wait_is_bounded_by_gpu_wait_s():
    got = usable_gpus(1, 0, started_here=False, cluster=FakeCluster(launching=True))
    assert got.gpus == 0 and "cluster.gpu_wait_s (0 s)" in got.reason


def test_an_unusable_gpu_means_the_cpu_with_a_warning(capsys, monkeypatch, detector):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a node without a working CUDA
    assert usable_device("cuda:0", "training worker 0") == torch.device("cpu")
    assert "training worker 0 was given cuda:0" in capsys.readouterr().out
    assert usable_device("cpu", "x") == torch.device("cpu")
    from tests.synthetic import telemetry

    frame = telemetry(120)
    before = detector.score(frame)
    detector.use_device("cuda")
    assert detector.score(frame).equals(before)


def test_gpu_settings_are_validated():
    with pytest.raises(ConfigError, match=r"serve\.num_gpus"):
        EyeNetConfig.from_dict({"serve": {"num_gpus": -1}})
    with pytest.raises(ConfigError, match=r"cluster\.gpu_wait_s"):
        EyeNetConfig.from_dict({"cluster": {"gpu_wait_s": -5}})
