"""Model registry: registration, promotion, rollback, concurrency, tamper detection.

Runs on every store backend (the registry's guarantees come from the store contract)."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
import torch

from eyenet.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    ModelNotFoundError,
    PromotionRejectedError,
    RegistryError,
)
from eyenet.models.artifacts import load_weights
from eyenet.models.registry import ModelRegistry
from tests import helpers

NAME = "eyenet-detector"


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    torch.save({"lstm.weight": torch.arange(6.0).reshape(2, 3)}, d / "weights.pt")
    (d / "config.json").write_text('{"hidden": 64}')
    (d / "scaler").mkdir()
    (d / "scaler" / "mean.json").write_text("[0.0, 1.0]")
    return d


@pytest.fixture
def registry(store, tmp_path) -> ModelRegistry:
    return ModelRegistry(store, tmp_path / "artifacts")


def weights_of(registry: ModelRegistry, version: int) -> dict:
    """What a loader reads: the verified copy's weights, through ``torch.load(weights_only=True)``."""
    return load_weights(registry.fetch(NAME, version) / "weights.pt")


def states(registry: ModelRegistry) -> dict[int, str]:
    return {v.version: v.state for v in registry.list(NAME)}


def test_register_creates_numbered_staging_versions(registry, model_dir):
    v1 = registry.register(model_dir, metrics={"auprc": 0.7}, config={"hidden": 64})
    v2 = registry.register(model_dir)
    assert (v1.version, v1.state, v1.metrics, v1.config) == (1, "staging", {"auprc": 0.7}, {"hidden": 64})
    assert v2.version == 2
    assert [v.version for v in registry.list(NAME)] == [1, 2]
    assert registry.production(NAME) is None
    kinds = [e.kind for e in registry.store.list_events(kind="model_registered")]
    assert kinds == ["model_registered", "model_registered"]


def test_promotion_archives_previous_and_keeps_exactly_one_production(registry, model_dir):
    for _ in range(3):
        registry.register(model_dir)
    registry.promote(NAME, 1)
    assert states(registry) == {1: "production", 2: "staging", 3: "staging"}
    registry.promote(NAME, 2)
    assert states(registry) == {1: "archived", 2: "production", 3: "staging"}
    registry.promote(NAME, 3)
    assert states(registry) == {1: "archived", 2: "archived", 3: "production"}
    assert registry.production(NAME).version == 3
    assert registry.get(NAME, 3).promoted_at is not None


def test_rollback_walks_back_the_production_lineage(registry, model_dir):
    for _ in range(3):
        registry.register(model_dir)
    for v in (1, 2, 3):
        registry.promote(NAME, v)
    assert registry.rollback(NAME).version == 2
    assert states(registry) == {1: "archived", 2: "production", 3: "archived"}
    assert registry.rollback(NAME).version == 1
    assert states(registry) == {1: "production", 2: "archived", 3: "archived"}
    with pytest.raises(RegistryError, match="no previous production"):
        registry.rollback(NAME)
    kinds = {e.kind for e in registry.store.list_events()}
    assert {"model_promoted", "model_rolled_back"} <= kinds


def test_rollback_without_production_is_refused(registry, model_dir):
    registry.register(model_dir)
    with pytest.raises(RegistryError, match="no production version"):
        registry.rollback(NAME)


def test_unknown_versions_and_double_promotion(registry, model_dir):
    registry.register(model_dir)
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        registry.promote(NAME, 7)
    for beyond in (0, -3, 2**63):  # 2**63 once crashed SQLite with OverflowError
        with pytest.raises(ModelNotFoundError, match=f"no version {beyond}"):
            registry.promote(NAME, beyond)
    registry.promote(NAME, 1)
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote(NAME, 1)


def test_failed_gate_keeps_version_in_staging_with_reasons(registry, model_dir):
    registry.register(model_dir)
    registry.register(model_dir)
    registry.promote(NAME, 1)

    def alert_budget(candidate, local_dir):
        assert (local_dir / "weights.pt").exists()
        return [f"v{candidate.version} alert rate 9% over budget 2%"]

    with pytest.raises(PromotionRejectedError) as info:
        registry.promote(NAME, 2, gates=[alert_budget])
    assert info.value.reasons == ["alert_budget: v2 alert rate 9% over budget 2%"]
    assert states(registry) == {1: "production", 2: "staging"}
    assert registry.get(NAME, 2).gate_failures == info.value.reasons
    registry.promote(NAME, 2, gates=[lambda c, d: []])
    assert registry.get(NAME, 2).gate_failures == []


def test_weights_round_trip_with_weights_only(registry, model_dir):
    registry.register(model_dir)
    weights = weights_of(registry, 1)
    assert torch.equal(weights["lstm.weight"], torch.arange(6.0).reshape(2, 3))


class Payload:
    """An arbitrary class: pickling it makes a file that runs code on a plain load."""


def test_pickled_code_is_refused_as_weights(registry, model_dir):
    torch.save({"payload": Payload()}, model_dir / "weights.pt")
    registry.register(model_dir)
    with pytest.raises(ArtifactError, match="not a plain tensor state dict"):
        weights_of(registry, 1)


@pytest.mark.parametrize("tamper, needle", [
    (lambda d: (d / "weights.pt").write_bytes(b"evil"), "weights.pt was modified"),
    (lambda d: (d / "scaler" / "mean.json").unlink(), "mean.json is missing"),
    (lambda d: (d / "extra.py").write_text("import os"), "not in its manifest"),
    (lambda d: (d / "MANIFEST.json").write_text("{}"), "differs from the digest"),
])
def test_tampered_artifacts_are_refused(registry, model_dir, tamper, needle):
    v = registry.register(model_dir)
    tamper(Path(registry.artifacts.path(v.artifact_path)))
    with pytest.raises(ArtifactIntegrityError, match=needle):
        registry.fetch(NAME, 1)
    with pytest.raises(PromotionRejectedError, match="artifact integrity"):
        registry.promote(NAME, 1)
    assert registry.get(NAME, 1).state == "staging"


def test_rollback_to_a_tampered_version_is_refused(registry, model_dir):
    registry.register(model_dir)
    registry.register(model_dir)
    registry.promote(NAME, 1)
    registry.promote(NAME, 2)
    (Path(registry.artifacts.path("eyenet-detector/v1")) / "weights.pt").write_bytes(b"x")
    with pytest.raises(ArtifactIntegrityError):
        registry.rollback(NAME)
    assert registry.production(NAME).version == 2


def test_register_refuses_bad_input(registry, model_dir, tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register(tmp_path / "nope")
    with pytest.raises(RegistryError, match="model name"):
        registry.register(model_dir, name="a/b")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="holds no files"):
        registry.register(empty)


def test_concurrent_registrations_never_share_a_number(backend, model_dir, tmp_path):
    n = 4
    root = tmp_path / "artifacts"
    if backend.multiprocess:
        backend.open().close()
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(n) as pool:
            got = pool.starmap(helpers.register_model,
                               [(backend.uri, str(root), str(model_dir))] * n)
        registry = ModelRegistry(backend.open(), root)
    else:
        registry = ModelRegistry(backend.open(), root)
        got = []
        lock = threading.Lock()

        def run() -> None:
            v = registry.register(model_dir).version
            with lock:
                got.append(v)

        threads = [threading.Thread(target=run) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(got) == [1, 2, 3, 4]
    assert [v.version for v in registry.list(NAME)] == [1, 2, 3, 4]
    for v in got:
        registry.fetch(NAME, v)  # each upload is complete and verifies


def test_remote_root_fetch_copies_while_verifying(store, model_dir, tmp_path):
    registry = ModelRegistry(store, tmp_path / "artifacts")
    v = registry.register(model_dir)
    registry.artifacts.is_local = False  # take the remote path: copy out, verifying each byte
    local = registry.fetch(NAME, 1, cache_dir=tmp_path / "cache")
    assert local == tmp_path / "cache"
    assert (local / "scaler" / "mean.json").read_text() == "[0.0, 1.0]"
    assert weights_of(registry, 1)["lstm.weight"].shape == (2, 3)
    (Path(registry.artifacts.path(v.artifact_path)) / "config.json").write_text("{}")
    with pytest.raises(ArtifactIntegrityError, match=r"config\.json was modified"):
        registry.fetch(NAME, 1, cache_dir=tmp_path / "cache2")
    assert not (tmp_path / "cache2").exists()


def test_artifact_root_uri_is_understood(store, model_dir, tmp_path):
    registry = ModelRegistry(store, f"file://{tmp_path}/uri-root")
    registry.register(model_dir)
    assert (tmp_path / "uri-root" / NAME / "v1" / "MANIFEST.json").exists()
    assert weights_of(registry, 1)["lstm.weight"].shape == (2, 3)


@pytest.mark.parametrize("remote", [False, True])
def test_loading_a_version_leaves_no_copy_behind(store, detector, tmp_path, monkeypatch, remote):
    """Every replica, pool actor and the monitor load a version on each promotion; each
    load used to leave a directory in the temp dir (an empty one for a local root, a full
    copy for a remote one)."""
    import tempfile

    from actors.features import load_version
    from actors.monitor import load_reference

    detector.save(tmp_path / "model")
    registry = ModelRegistry(store, tmp_path / "artifacts")
    registry.register(tmp_path / "model")
    registry.artifacts.is_local = not remote
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = load_version(registry, NAME, 1)
    assert loaded.metrics == detector.metrics
    assert load_reference(registry, NAME, 1) is not None
    registry.promote(NAME, 1)
    assert list(scratch.iterdir()) == []
