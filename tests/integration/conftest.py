"""One local Ray (2 CPUs) shared by every integration test in the session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
    # The dashboard stays on: Ray Train's placement-group cleaner asks the state API whether
    # a run's controller is gone, and without it a finished Tune trial keeps its CPUs.
    ray.init(num_cpus=2, logging_level="WARNING")
    yield
    ray.shutdown()
