"""The actors' Ray-free parts: importing them starts no Ray; devices route and split stably."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from actors.collector import route
from actors.features import split_by_device

REPO = Path(__file__).resolve().parents[2]


# -- actors: routing and splitting (no Ray) -------------------------------------------------------

DEVICE_IDS = [f"dev-{i:04d}" for i in range(1000)]


def test_importing_the_actor_modules_does_not_start_ray():
    """In a fresh interpreter (another hash seed): no ray import at all, and the same routes."""
    code = ("import json, sys\n"
            "import actors.collector, actors.features, actors.monitor, actors.pipeline\n"
            "import jobs.ingest, jobs.report\n"
            "from actors.collector import route\n"
            "print(json.dumps({'ray': 'ray' in sys.modules,\n"
            "                  'routes': [route(f'dev-{i:04d}', 3) for i in range(200)]}))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ray"] is False
    assert result["routes"] == [route(d, 3) for d in DEVICE_IDS[:200]]  # stable across processes


@pytest.mark.parametrize("n_actors", [1, 2, 3, 7])
def test_route_is_stable_and_in_range(n_actors):
    routes = [route(d, n_actors) for d in DEVICE_IDS]
    assert routes == [route(d, n_actors) for d in DEVICE_IDS]
    assert set(routes) == set(range(n_actors))


def test_route_spreads_devices_over_two_actors():
    counts = Counter(route(d, 2) for d in DEVICE_IDS)
    assert set(counts) == {0, 1}
    assert 400 <= counts[0] <= 600 and counts[0] + counts[1] == 1000


def fleet_frame(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(d, i) for d, n in sizes.items() for i in range(n)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))  # devices interleaved
    return pd.DataFrame([rows[i] for i in order], columns=["device_id", "seq"]).rename(
        index=lambda i: i * 10)  # an index that is not 0..n-1


def test_split_by_device_keeps_whole_devices_and_balances_rows():
    sizes = {"a": 50, "b": 30, "c": 20, "d": 20, "e": 10, "f": 5, "g": 1}
    frame = fleet_frame(sizes)
    parts = split_by_device(frame, 2)
    assert len(parts) == 2
    owners = [set(p["device_id"]) for p in parts]
    assert owners[0].isdisjoint(owners[1]) and owners[0] | owners[1] == set(sizes)
    for part, devices in zip(parts, owners, strict=True):
        assert len(part) == sum(sizes[d] for d in devices)  # every row of each device it holds
        assert part.index.is_monotonic_increasing  # the frame's own order and index
    loads = sorted(len(p) for p in parts)
    assert loads[1] - loads[0] <= max(sizes.values())
    assert loads == [66, 70]  # largest first, each onto the lighter part
    pd.testing.assert_frame_equal(pd.concat(parts).sort_index(), frame.sort_index())


def test_split_by_device_with_more_parts_than_devices_or_one_part():
    frame = fleet_frame({"a": 3, "b": 2})
    parts = split_by_device(frame, 5)
    assert sorted(len(p) for p in parts) == [2, 3]
    assert all(p["device_id"].nunique() == 1 for p in parts)
    (whole,) = split_by_device(frame, 1)
    pd.testing.assert_frame_equal(whole, frame)


def test_collector_stats_answer_during_a_long_poll_with_the_last_polls_figures(tmp_path):
    # a collector catching up a backlog holds its poll lock for seconds on a busy machine;
    # stats() waited on it, so the pipeline's progress and /metrics timed out
    import threading

    from actors.collector import STATS_WAIT_S, CollectorActor
    from tests.synthetic import make_config

    config = make_config(tmp_path)
    actor = CollectorActor(config.to_dict(), "simulated", {"devices": 2, "seed": 1}, ["dev-0000", "dev-0001"],
                           "simulated-0")
    try:
        with actor._lock:   # a poll in progress
            answer: list[dict] = []
            reader = threading.Thread(target=lambda: answer.append(actor.stats()))
            reader.start()
            reader.join(STATS_WAIT_S + 10)
            assert answer, "stats() blocked behind the running poll"
        assert answer[0]["name"] == "simulated-0" and answer[0]["stats_age_s"] >= 0
        assert actor.stats()["stats_age_s"] < 5                   # fresh again once the poll ends
    finally:
        actor._stop.set()
        actor._thread.join(10)
