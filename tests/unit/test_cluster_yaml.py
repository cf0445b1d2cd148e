"""cluster.yaml stays a valid Ray cluster launcher config with the node types the README
and the autoscaling test describe (the fake cluster is built from this same file)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.fake_cluster import fake_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def launcher_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validated(config: dict) -> dict:
    """What `ray up` does first: fill Ray's defaults in, then check the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_cluster_yaml_passes_rays_schema_with_a_cpu_head_and_gpu_and_cpu_types_from_zero():
    config = validated(launcher_config())
    types = config["available_node_types"]
    assert "GPU" not in types[config["head_node_type"]]["resources"]
    assert types["ray.worker.gpu"]["resources"]["GPU"] >= 1 and types["ray.worker.gpu"]["min_workers"] == 0
    assert "GPU" not in types["ray.worker.cpu"]["resources"] and types["ray.worker.cpu"]["min_workers"] == 0


def test_the_schema_check_catches_a_broken_file():
    from jsonschema.exceptions import ValidationError

    broken = launcher_config()
    broken["available_node_types"]["ray.worker.gpu"]["max_workers"] = "lots"
    with pytest.raises(ValidationError, match="'lots' is not of type 'integer'"):
        validated(broken)


def test_the_fake_cluster_has_cluster_yamls_node_types_and_passes_the_schema():
    from ray.autoscaler._private.util import validate_config

    fake = fake_config(CLUSTER_YAML, 6379, idle_timeout_minutes=0.1)
    validate_config(fake)
    real = launcher_config()["available_node_types"]
    for name in ("ray.worker.gpu", "ray.worker.cpu"):
        assert fake["available_node_types"][name]["resources"] == real[name]["resources"]
        assert fake["available_node_types"][name]["max_workers"] == real[name]["max_workers"]
    assert fake["provider"]["type"] == "fake_multinode"
