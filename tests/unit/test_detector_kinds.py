"""Every detector kind behind one interface: fit, score, save, load, and the ensemble's
members saved as one model; the baselines are detectors of their own kinds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eyenet.config import DetectorConfig
from eyenet.detection.detector import META_FILE, WEIGHTS_FILE, Detector
from eyenet.detection.error_models import EnsembleModel, SubspaceModel, subsequences
from eyenet.detection.evaluation import EVALUATED_MODELS
from eyenet.errors import ArtifactError, ConfigError
from tests.synthetic import METRICS, config, telemetry, test_frame

KINDS = ["lstm", "pca", "kmeans", "ensemble"]


def quiet_rows(out: pd.DataFrame, spike: np.ndarray) -> pd.DataFrame:
    """Scored rows away from the spike and from the error profile's memory of it."""
    after = np.convolve(spike.astype(int), np.ones(4 * WINDOW_TARGET))[:len(spike)] > 0
    return out[~after & out["raw_score"].notna().to_numpy()]


@pytest.fixture(scope="module")
def fitted() -> dict[str, Detector]:
    train = telemetry()
    return {kind: Detector(config(kind=kind, ensemble_members=["lstm", "pca", "kmeans"]), METRICS,
                           gap_s=5).fit(train) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_a_spike_and_names_its_metric(fitted, kind):
    frame, spike = test_frame()
    out = fitted[kind].score(frame)
    quiet = quiet_rows(out, spike)
    assert out.loc[spike, "score"].min() > quiet["score"].quantile(0.99)
    assert out.loc[spike, "is_anomaly"].all()
    assert (out.loc[spike, "top_feature"] == "latency").all()
    assert quiet["is_anomaly"].mean() < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_saves_and_loads_to_identical_scores(fitted, kind, tmp_path):
    detector = fitted[kind]
    path = detector.save(tmp_path / kind)
    meta = json.loads((path / META_FILE).read_text())
    assert meta["kind"] == kind
    # the network's weights travel only with kinds that have one
    assert (path / WEIGHTS_FILE).exists() == (kind in ("lstm", "ensemble"))
    loaded = Detector.load(path)
    frame, _ = test_frame()
    pd.testing.assert_frame_equal(loaded.score(frame), detector.score(frame))
    assert loaded.model.kind == kind


def test_the_ensemble_scores_its_members_in_threshold_units(fitted):
    """Ensemble errors are the mean of each member's errors over that member's threshold
    scale, and the members are saved inside the one model."""
    ensemble = fitted["ensemble"]
    assert isinstance(ensemble.model, EnsembleModel)
    assert [m.kind for m in ensemble.model.members] == ["lstm", "pca", "kmeans"]
    frame, _ = test_frame()
    feats = ensemble.features(frame)
    scaled = ensemble.scaled(feats).scaled
    targets = np.arange(WINDOW_TARGET, WINDOW_TARGET + 20)
    combined, _ = ensemble.point_errors(scaled, targets)
    parts = [m.point_errors(scaled, targets, ensemble.config.window_steps)[0] / s
             for m, s in zip(ensemble.model.members, ensemble.model.scales, strict=True)]
    np.testing.assert_allclose(combined, np.mean(parts, axis=0), rtol=1e-6)  # float32 networks
    assert all(s > 0 for s in ensemble.model.scales)


WINDOW_TARGET = 10


def test_pca_residual_is_zero_inside_its_subspace():
    """A subsequence made of the mean plus a component reconstructs exactly."""
    rng = np.random.default_rng(0)
    scaled = rng.standard_normal((400, 3)).astype(np.float32)
    targets = np.arange(5, 400)
    model = SubspaceModel.fit(scaled, targets, DetectorConfig(subsequence_steps=2, window_steps=5))
    inside = model.mean + 2.0 * model.components[0]
    row = np.vstack([np.zeros((4, 3)), inside.reshape(3, 2).T]).astype(np.float64)
    errors, _ = model.point_errors(row, np.array([5]), 5)
    assert errors.max() < 1e-10
    assert subsequences(row, np.array([5]), 2).shape == (1, 6)


def test_a_saved_model_that_lost_its_weights_is_refused(fitted, tmp_path):
    path = fitted["ensemble"].save(tmp_path / "ens")
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="weights"):
        Detector.load(path)


def test_kinds_without_a_network_fit_without_training_one():
    det = Detector(config(kind="kmeans"), METRICS, gap_s=5).fit(telemetry())
    assert det.model.network() is None and "epochs" not in det.training


@pytest.mark.parametrize(("overrides", "named"), [
    ({"kind": "svm"}, "kind"),
    ({"kind": "pca", "objective": "classify"}, "classify"),
    ({"subsequence_steps": 50, "window_steps": 10}, "subsequence_steps"),
    ({"ensemble_members": ["pca", "pca"]}, "ensemble_members"),
])
def test_bad_kind_settings_are_refused_naming_them(overrides, named):
    from eyenet.config import EyeNetConfig

    with pytest.raises(ConfigError, match=named):
        EyeNetConfig.from_dict({"detector": overrides})


@pytest.mark.parametrize("model", ["baseline_pca", "baseline_isolation_forest"])
def test_baselines_are_detectors_that_flag_a_spike(model):
    """Row-wise baselines through the same Detector: a break of the relation c = a + b is
    ranked above every normal row and flagged."""
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    values = np.c_[np.sin(t / 20), np.cos(t / 20), np.sin(t / 20) + np.cos(t / 20)]
    values = values + 0.05 * rng.standard_normal(values.shape)
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    frame.insert(0, "timestamp", pd.date_range("2026-01-01", periods=len(t), freq="1s", tz="UTC"))
    frame.insert(0, "device_id", "d")
    train, test = frame.iloc[:1000], frame.iloc[1000:].copy()
    test.iloc[50:55, test.columns.get_loc("c")] += 5.0
    det = Detector(config(**EVALUATED_MODELS[model]), ["a", "b", "c"], gap_s=3).fit(train)
    out = det.score(test)
    raw = out["raw_score"].to_numpy()
    assert raw[50:55].min() > np.nanquantile(raw[100:], 0.99)
    assert out["is_anomaly"].to_numpy()[50:55].all()


@pytest.mark.parametrize("kind", ["pca", "kmeans", "ensemble"])
def test_every_kind_passes_the_registry_and_the_promotion_gate(fitted, kind, tmp_path):
    """A kind without a network (no weights.pt) registers, passes the replay gate, is
    fetched and loads as the same kind."""
    from eyenet.config import EyeNetConfig
    from eyenet.models.gates import promotion_gates
    from eyenet.models.registry import ModelRegistry
    from eyenet.store import open_store

    cfg = EyeNetConfig(metrics=METRICS, counter_metrics=[], store_uri=f"sqlite:///{tmp_path}/e.db",
                       artifact_root=str(tmp_path / "artifacts"))
    store = open_store(cfg.store_uri)
    registry = ModelRegistry(store, cfg.artifact_root)
    store.write_samples(telemetry(300, start_s=1000).assign(label=0))
    mv = registry.register(fitted[kind].save(tmp_path / "model"))
    promoted = registry.promote(mv.name, mv.version, gates=promotion_gates(cfg, registry))
    assert promoted.state == "production" and promoted.gate_report["alert_rate"] <= 0.05
    assert Detector.load(registry.fetch(mv.name, mv.version)).model.kind == kind


def test_saving_the_isolation_forest_baseline_is_a_clear_error(tmp_path):
    """It exists for evaluation; saving it names the kind instead of a bare traceback."""
    det = Detector(config(kind="isolation_forest"), METRICS, gap_s=5).fit(telemetry())
    with pytest.raises(ArtifactError, match="isolation_forest"):
        det.save(tmp_path / "forest")
