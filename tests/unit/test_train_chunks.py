"""Chunking of the training history for Ray Data (pure numpy; no Ray started)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from eyenet.config import DetectorConfig
from eyenet.detection.detector import Detector
from jobs.ray_train import chunk_arrays, expand_chunks


def prepared(rows: int = 500, flagged: slice | None = None):
    t = np.arange(rows)
    frame = pd.DataFrame({"device_id": "d", "timestamp": pd.date_range("2026-01-01", periods=rows,
                                                                         freq="1s", tz="UTC"),
                          "a": np.sin(t / 9.0), "b": np.cos(t / 7.0), "label": 0})
    if flagged is not None:
        frame.loc[flagged, "label"] = 1
    det = Detector(DetectorConfig(window_steps=5, validation_fraction=0.2), ["a", "b"], gap_s=3)
    return det.prepare(frame)


def expanded(data, targets, chunk_targets):
    chunks = chunk_arrays(data, targets, 5, chunk_targets=chunk_targets)
    batch = {k: np.stack([c[k] for c in chunks]) for k in chunks[0]}
    return chunks, expand_chunks(batch, 5, "forecast")


def test_chunks_expand_to_exactly_the_in_memory_windows():
    data = prepared()
    chunks, out = expanded(data, data.train_targets, chunk_targets=64)
    x, y = data.arrays(data.train_targets, 5, "forecast")
    assert len({c["rows"].shape for c in chunks}) == 1
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["y"], y)


def test_targets_with_holes_still_fit_their_chunks():
    """Regression: chunks were cut by target count, so a hole left by excluded (flagged)
    windows made a chunk's rows longer than its fixed shape and chunking failed."""
    data = prepared(flagged=slice(100, 160))
    assert np.diff(data.train_targets).max() > 50
    _, out = expanded(data, data.train_targets, chunk_targets=64)
    x, _ = data.arrays(data.train_targets, 5, "forecast")
    np.testing.assert_array_equal(out["x"], x)
