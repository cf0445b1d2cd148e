"""Each Ray Train rank's windows over the training history the driver sends (pure numpy;
no Ray started)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from eyenet.config import DetectorConfig
from eyenet.detection.detector import Detector
from jobs.ray_train import RankWindows, rank_targets

WINDOW = 5
CPU = torch.device("cpu")


def prepared(rows: int = 500, flagged: slice | None = None, devices: int = 1):
    t = np.arange(rows)
    frames = []
    for d in range(devices):
        frame = pd.DataFrame({"device_id": f"d{d}", "timestamp": pd.date_range("2026-01-01", periods=rows,
                                                                                freq="1s", tz="UTC"),
                              "a": np.sin(t / 9.0 + d), "b": np.cos(t / 7.0) + d, "label": 0})
        if flagged is not None:
            frame.loc[flagged, "label"] = 1
        frames.append(frame)
    det = Detector(DetectorConfig(window_steps=WINDOW, validation_fraction=0.2), ["a", "b"], gap_s=3)
    return det.prepare(pd.concat(frames, ignore_index=True))


def share(data, objective: str = "forecast", rank: int = 0, world: int = 1) -> RankWindows:
    """What ``rank`` of ``world`` trains on, as a Train worker builds it."""
    return RankWindows(data.scaled, data.features.flagged.astype(np.float32),
                       rank_targets(data.train_targets, rank, world), WINDOW, objective)


def epoch(windows: RankWindows, batch_size: int = 16, seed: int | None = None):
    batches = list(windows.batches(batch_size, CPU, seed))
    return (torch.cat([x for x, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy(),
            [len(x) for x, _ in batches])


def test_one_rank_gets_exactly_the_in_memory_windows():
    data = prepared()
    x, y, sizes = epoch(share(data))
    want_x, want_y = data.arrays(data.train_targets, WINDOW, "forecast")
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    assert sizes[:-1] == [16] * (len(sizes) - 1)


def test_targets_with_holes_give_exactly_the_in_memory_windows():
    """A hole left by excluded (flagged) windows is no window of the epoch."""
    data = prepared(flagged=slice(100, 160))
    assert np.diff(data.train_targets).max() > 50
    x, _, _ = epoch(share(data))
    np.testing.assert_array_equal(x, data.arrays(data.train_targets, WINDOW, "forecast")[0])


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_the_windows_evenly_and_each_window_once(world):
    """DDP steps every rank together: each rank gets the same count, and together they get
    every window once (less a remainder of fewer than ``world``)."""
    data = prepared(rows=301)
    shares = [share(data, rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    assert len(data.train_targets) - world < sum(len(s) for s in shares) <= len(data.train_targets)
    seen = np.concatenate([epoch(s)[1] for s in shares])
    want = data.arrays(data.train_targets, WINDOW, "forecast")[1]
    assert len(np.unique(seen, axis=0)) == len(seen)
    assert {tuple(r) for r in seen} <= {tuple(r) for r in want}


def test_an_epoch_shuffles_across_every_device():
    """A seeded epoch is every window once in an order drawn over all devices: its
    first mini-batch already mixes windows of most devices, as training in one process does.
    Shuffled only within blocks of a few chunks, a batch held two or three devices."""
    data = prepared(rows=1500, devices=8)  # 9,500 windows: more than a block of STREAM_WINDOWS
    windows = share(data)
    x, y, _ = epoch(windows, batch_size=32, seed=1)
    _, plain_y, _ = epoch(windows)
    assert sorted(map(tuple, y)) == sorted(map(tuple, plain_y))
    assert not np.array_equal(y, plain_y)
    _, want_y = data.arrays(data.train_targets, WINDOW, "forecast")
    device_of = dict(zip(map(tuple, want_y), data.features.device_ids[data.train_targets], strict=True))
    assert len({device_of[tuple(row)] for row in y[:32]}) >= 6
    again, _, _ = epoch(windows, batch_size=32, seed=1)
    np.testing.assert_array_equal(again, x)


def test_a_classifier_rank_gets_the_labels_as_targets():
    data = prepared(flagged=slice(200, 203))
    _, y, _ = epoch(share(data, "classify"))
    np.testing.assert_array_equal(y, data.arrays(data.train_targets, WINDOW, "classify")[1])


def test_a_rank_without_windows_yields_nothing():
    windows = RankWindows(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                          WINDOW, "forecast")
    assert len(windows) == 0 and list(windows.batches(8, CPU, 0)) == []
