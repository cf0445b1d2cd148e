"""The label-free promotion gate: replay recent telemetry, refuse an alert storm, report
agreement with production."""

from __future__ import annotations

import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import PromotionRejectedError
from eyenet.models.gates import promotion_gates
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from jobs.cli import main
from tests.synthetic import METRICS, config, telemetry


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    good = Detector(config(), METRICS, gap_s=3.0).fit(telemetry(400))
    # the same network with every device's threshold at 0.01: it flags nearly everything
    noisy = Detector(config(device_thresholds={"r1": 0.01, "r2": 0.01}), METRICS,
                     gap_s=3.0).fit(telemetry(400))
    tmp = tmp_path_factory.mktemp("gate-models")
    return good.save(tmp / "good"), noisy.save(tmp / "noisy")


@pytest.fixture
def setup(tmp_path):
    cfg = EyeNetConfig(metrics=METRICS, counter_metrics=[], store_uri=f"sqlite:///{tmp_path}/e.db",
                       artifact_root=str(tmp_path / "artifacts"))
    return cfg, ModelRegistry(open_store(cfg.store_uri), cfg.artifact_root)


def ingest(registry, n=200):
    live = telemetry(n, start_s=7000, seed=9)
    registry.store.write_samples(live.assign(label=pd.array([None] * len(live), dtype="Int8")))


def test_a_quiet_candidate_passes_and_its_report_is_recorded(setup, detectors):
    cfg, registry = setup
    ingest(registry)
    first = registry.register(detectors[0])
    assert registry.promote(first.name, first.version, promotion_gates(cfg, registry)).state == "production"
    report = registry.get(first.name, first.version).gate_report
    assert report["replayed_points"] > 300 and report["alert_rate"] <= cfg.promotion.gate_max_alert_rate
    assert report["agreement_with_production"] is None  # nothing in production before it
    second = registry.register(detectors[0])
    registry.promote(second.name, second.version, promotion_gates(cfg, registry))
    assert registry.get(second.name, second.version).gate_report["agreement_with_production"] == 1.0


def test_an_alert_storm_stays_in_staging_with_its_reasons(setup, detectors):
    cfg, registry = setup
    ingest(registry)
    noisy = registry.register(detectors[1])
    with pytest.raises(PromotionRejectedError, match="alert rate"):
        registry.promote(noisy.name, noisy.version, promotion_gates(cfg, registry))
    after = registry.get(noisy.name, noisy.version)
    assert after.state == "staging" and "exceeds the budget" in after.gate_failures[0]
    assert after.gate_report["alert_rate"] > 4 * cfg.promotion.gate_max_alert_rate


def test_no_telemetry_means_no_promotion_unless_the_gate_is_skipped(setup, detectors, capsys):
    cfg, registry = setup
    mv = registry.register(detectors[0])
    with pytest.raises(PromotionRejectedError, match="no recent telemetry"):
        registry.promote(mv.name, mv.version, promotion_gates(cfg, registry))
    args = ["--store", cfg.store_uri, "--artifact-root", cfg.artifact_root]
    assert main(["models", "promote", "1", *args]) == 1
    assert "no recent telemetry" in capsys.readouterr().err
    assert main(["models", "promote", "1", "--skip-gate", *args]) == 0
