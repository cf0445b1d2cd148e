"""Incremental (live) scoring gives the offline detector's numbers, sample by sample."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from eyenet.detection.detector import Detector
from eyenet.errors import TelemetryError
from eyenet.streaming.scorer import StreamScorer
from tests.synthetic import METRICS, config, telemetry

COMPARED = ["device_id", "timestamp", "is_anomaly", "top_feature"]


@pytest.fixture(scope="module", params=["forecast", "classify"])
def detector(request) -> Detector:
    history = telemetry(500, devices=("r1", "r2"))
    if request.param == "classify":
        history["label"] = 0
        history.loc[history.index % 97 < 3, "label"] = 1
    return Detector(config(objective=request.param), METRICS, gap_s=3.0).fit(history)


def live_feed() -> pd.DataFrame:
    """Three devices (one unseen in training), a gap on r2, a missing value and a spike."""
    feed = telemetry(150, start_s=2000, seed=3, devices=("r1", "r2", "new"))
    t = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    feed = feed[~((feed["device_id"] == "r2") & t.between(40, 46))].reset_index(drop=True)
    feed.loc[7, "cpu"] = np.nan
    feed.loc[(feed["device_id"] == "r1") & t.between(100, 110), "latency"] *= 8
    return feed


def stream(scorer: StreamScorer, feed: pd.DataFrame, chunks: list[pd.DataFrame]) -> pd.DataFrame:
    out = pd.concat([scorer.update(c) for c in chunks], ignore_index=True)
    return out.sort_values(["device_id", "timestamp"]).reset_index(drop=True)


@pytest.mark.parametrize("chunking", ["one_tick", "ragged"])
def test_streaming_scores_equal_offline_scores(detector, chunking):
    feed = live_feed()
    offline = detector.score(feed)
    if chunking == "one_tick":
        chunks = [g for _, g in feed.groupby("timestamp")]
    else:  # uneven chunks, devices interleaved, rows inside a chunk shuffled
        cuts = np.cumsum(np.random.default_rng(1).integers(1, 40, 40))
        ordered = feed.sort_values("timestamp", kind="stable")
        bounds = [0, *cuts[cuts < len(feed)].tolist(), len(feed)]
        chunks = [ordered.iloc[a:b].sample(frac=1, random_state=0)
                  for a, b in itertools.pairwise(bounds) if b > a]
    online = stream(StreamScorer(detector), feed, chunks)
    assert len(online) == len(offline)
    pd.testing.assert_frame_equal(online[COMPARED], offline[COMPARED])
    np.testing.assert_allclose(online["score"], offline["score"], atol=1e-5)
    if detector.config.objective == "forecast":
        assert online["is_anomaly"].any(), "the latency spike should be found live as offline"


def test_resent_and_late_samples_are_not_scored_twice(detector):
    feed = live_feed()
    scorer = StreamScorer(detector)
    first = scorer.update(feed.iloc[:200])
    again = scorer.update(feed.iloc[:200])
    assert len(first) == 200 and again.empty


def test_the_buffer_holds_the_newest_rows_only(detector):
    feed = telemetry(100, start_s=0, devices=("r1",))
    scorer = StreamScorer(detector)
    scorer.update(feed)
    window = scorer._frame(["r1"])
    assert len(window) == scorer.buffer_rows
    assert window["timestamp"].iloc[-1] == feed["timestamp"].iloc[-1]


def test_a_new_model_takes_the_buffered_window_and_scores_the_next_sample(detector):
    """A switch to another model (a promotion) carries each device's buffered rows over, so
    the next sample is scored at once rather than after a whole new window."""
    feed = telemetry(60, start_s=0, devices=("r1",))
    old = StreamScorer(detector)
    old.update(feed.iloc[:50])
    fresh, taken = StreamScorer(detector), StreamScorer(detector)
    assert taken.take_buffers(old) == 1
    assert taken.update(feed.iloc[50:51])["raw_score"].notna().all()
    assert fresh.update(feed.iloc[50:51])["raw_score"].isna().all()
    assert taken.update(feed.iloc[40:51]).empty, "rows the old model scored are not scored again"


def test_a_device_met_for_the_first_time_is_judged_by_a_profile_primed_from_its_stored_rows(detector):
    """A pool that starts (or restarts) in the middle of a device's history reads the rows
    stored just before its first sample (one read per batch of such devices) and runs them
    through the error profile unreported: its scores are offline scoring's with that history
    as context. Unprimed, the profile starts empty and its first points differ (noisier)."""
    feed = telemetry(140, start_s=2000, seed=3, devices=("r1", "r2"))
    seconds = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    stored, live = feed[seconds < 20], feed[seconds >= 20]  # fewer stored rows than it primes with
    reads = []

    def history(device_ids, first_ms):
        reads.append((device_ids, first_ms))
        return stored[stored["device_id"].isin(device_ids)]

    ticks = [g for _, g in live.groupby("timestamp")]
    primed = stream(StreamScorer(detector, history=history), live, ticks)
    if not detector.smoothed:  # a classifier's probability has no profile: nothing is read
        assert reads == []
        pd.testing.assert_frame_equal(primed, stream(StreamScorer(detector), live, ticks))
        return
    offline = detector.score(live, history=stored)
    pd.testing.assert_frame_equal(primed[COMPARED], offline[COMPARED])
    np.testing.assert_allclose(primed["score"], offline["score"], atol=1e-5)
    first_ms = int(live["timestamp"].min().value // 1_000_000)
    assert reads == [(["r1", "r2"], {"r1": first_ms, "r2": first_ms})]
    cold = stream(StreamScorer(detector), live, ticks)
    assert not np.allclose(cold["score"], offline["score"], atol=1e-3)


def test_a_device_with_nothing_stored_starts_unprimed(detector):
    """An empty read (a device that just joined) leaves the scorer as it was without one."""
    live = telemetry(60, start_s=2000, seed=3, devices=("r1",))
    ticks = [g for _, g in live.groupby("timestamp")]
    empty = stream(StreamScorer(detector, history=lambda d, f: live.iloc[:0]), live, ticks)
    pd.testing.assert_frame_equal(empty, stream(StreamScorer(detector), live, ticks))


def test_unfitted_detector_is_refused():
    with pytest.raises(TelemetryError, match="not fitted"):
        StreamScorer(Detector(config(), METRICS, gap_s=3.0))


def test_a_fleet_scored_in_one_call_gets_each_devices_own_numbers(detector):
    """The scorer advances every device of a call in one array step: each device's rows must
    be what a scorer fed that device alone gives (gaps, a missing value and a spike included)."""
    feed = live_feed()
    ticks = [g for _, g in feed.groupby("timestamp")]
    scorer = StreamScorer(detector)
    together = pd.concat([scorer.update(t) for t in ticks], ignore_index=True)
    for device, rows in feed.groupby("device_id"):
        alone = StreamScorer(detector)
        own = pd.concat([alone.update(g) for _, g in rows.groupby("timestamp")], ignore_index=True)
        mine = together[together["device_id"] == device].reset_index(drop=True)
        # decisions exactly; scores up to float32 rounding (torch sums a larger batch otherwise)
        pd.testing.assert_frame_equal(mine.drop(columns=["score", "raw_score"]),
                                      own.drop(columns=["score", "raw_score"]))
        np.testing.assert_allclose(mine[["score", "raw_score"]], own[["score", "raw_score"]], atol=1e-5)
