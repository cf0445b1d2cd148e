"""Fixtures of the unit tests (which never start Ray)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from eyenet.detection.detector import Detector
from tests.synthetic import METRICS, config, telemetry


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Small models run fastest (and identically) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector() -> Detector:
    """A small served forecaster (modules that need another one define their own)."""
    return Detector(config(), METRICS, gap_s=3.0).fit(telemetry(400))
