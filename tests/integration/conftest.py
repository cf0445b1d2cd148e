"""One local Ray (2 CPUs) shared by every integration test in the session."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eyenet.detection.detector import Detector
from eyenet.sources.simulator import SimulatedSource
from eyenet.telemetry.validation import TelemetryValidator
from tests.synthetic import DEVICES, SEED, make_config


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
    # The dashboard stays on: Ray Train's placement-group cleaner asks the state API whether
    # a run's controller is gone, and without it a finished Tune trial keeps its CPUs.
    # address="local": a fresh cluster even when `ray start` runs one on this machine (a
    # plain ray.init() would join that one, and refuse num_cpus)
    context = ray.init(address="local", num_cpus=2, logging_level="WARNING")
    yield context  # its dashboard_url is where `ray job submit` talks to this cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A small detector trained on 20 minutes of the simulated fleet, and that history."""
    tmp = tmp_path_factory.mktemp("model")
    config = make_config(tmp)
    source = SimulatedSource(config, devices=DEVICES, seed=SEED)
    end_ms = int(time.time() * 1000) - 3_600_000
    raw = source.fetch(source.devices(), end_ms - 1_200_000, end_ms).samples
    history = TelemetryValidator(config).validate(raw).accepted
    detector = Detector(config.detector, config.metrics, config.gap_s).fit(history)
    return detector.save(tmp / "model"), history
