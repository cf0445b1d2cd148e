"""The live scorer behind each feature actor: stream scores, anomaly episodes in the store,
and the per-batch summary the monitor receives. Ray-free, with an injected clock."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import StoreError
from eyenet.monitoring.monitor import ScoreSummary
from eyenet.store import open_store
from eyenet.streaming.live import LiveScorer
from eyenet.telemetry.schema import to_ms
from tests.helpers import Clock
from tests.synthetic import METRICS, T0, config, telemetry

HOT, CALM = "hot", "calm"
START_S = 2000                       # the feed starts this long after the training data's T0
FEED_S = 300
SPIKES_S = ((60, 64), (200, 204))    # latency + 100 on HOT, seconds into the feed (inclusive)
RESOLVE_AFTER_S = 20
MIN_POINTS = 3                       # alerts.anomaly_min_points (the default)
MODEL_VERSION = 7
# The 3-epoch model scores clean samples up to about 0.6, so the fitted 0.5 threshold would
# flag a few clean points; the documented per-device override keeps CALM clean while the
# +100 latency spike scores about 1.0.
THRESHOLDS = {HOT: 0.9, CALM: 0.9}


def eyenet_config() -> EyeNetConfig:
    return EyeNetConfig(metrics=METRICS, counter_metrics=[],
                        detector=config(device_thresholds=THRESHOLDS).model_dump(),
                        alerts={"resolve_after_s": RESOLVE_AFTER_S})


@pytest.fixture(scope="module")
def detector() -> Detector:
    cfg = eyenet_config()
    # trained on the devices it then scores (an unseen device would learn its scale first)
    return Detector(cfg.detector, cfg.metrics, gap_s=cfg.gap_s).fit(telemetry(600, devices=(HOT, CALM)))


def feed_ms(second: float) -> int:
    """Epoch ms of ``second`` seconds into the feed."""
    return int((T0 + pd.Timedelta(seconds=START_S + second)).value // 1_000_000)


def live_feed() -> pd.DataFrame:
    feed = telemetry(FEED_S, start_s=START_S, seed=3, devices=(HOT, CALM))
    t = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    for a, b in SPIKES_S:
        feed.loc[(feed["device_id"] == HOT) & t.between(a, b), "latency"] += 100.0
    return feed


def ticks(feed: pd.DataFrame) -> list[tuple[float, pd.DataFrame]]:
    """(epoch seconds, rows) per timestamp, oldest first."""
    return [(ts.value / 1e9, rows) for ts, rows in feed.groupby("timestamp")]


def episode_events(store, device_id: str | None = None) -> list:
    """Anomaly events, oldest episode first."""
    return sorted(store.list_events(kind="anomaly", device_id=device_id), key=lambda e: e.payload["start_ms"])


def split_episodes(anomalies: list[tuple[str, int, float, list[str]]]) -> list[list[tuple]]:
    """The feed's anomalous points of one device, cut where the spikes' windows part."""
    middle = feed_ms((SPIKES_S[0][1] + SPIKES_S[1][0]) / 2)
    return [[a for a in anomalies if a[1] < middle], [a for a in anomalies if a[1] >= middle]]


# -- episodes ---------------------------------------------------------------------------------

def test_a_spike_opens_one_episode_that_resolves_after_a_quiet_stretch(detector, store):
    """Tick by tick: the spike opens one event naming latency as soon as it holds
    ``anomaly_min_points`` points (none before); it stays open while
    the device has been quiet for resolve_after_s or less and resolves after longer; the
    second spike opens a second event; the clean device gets none."""
    clock = Clock()
    live = LiveScorer(detector, store, eyenet_config(), model_version=MODEL_VERSION, now_s=clock)
    anomalies: list[tuple[str, int, float, list[str]]] = []
    first_status: dict[int, str | None] = {}   # feed ms -> stored status of the first episode
    open_points: list[int] = []                # its stored point count while open
    for ts_s, rows in ticks(live_feed()):
        clock.now = ts_s + 0.25
        _, summary = live.score(rows)
        anomalies += summary.anomalies
        events = episode_events(store, HOT)
        first_status[round(ts_s * 1000)] = events[0].status if events else None
        if events and events[0].status == "open":
            open_points.append(events[0].payload["points"])
        if 0 < len(anomalies) < MIN_POINTS:
            assert store.list_events(kind="anomaly") == []
        elif len(anomalies) - len(summary.anomalies) < MIN_POINTS <= len(anomalies):  # it qualifies
            (event,) = store.list_events(kind="anomaly")
            assert event.status == "open" and event.device_id == HOT
            assert event.payload["points"] == MIN_POINTS and event.payload["start_ms"] == anomalies[0][1]

    assert anomalies and {a[0] for a in anomalies} == {HOT}
    assert store.list_events(kind="anomaly", device_id=CALM) == []
    first, second = split_episodes(anomalies)
    assert first and second
    assert feed_ms(SPIKES_S[0][0]) <= first[0][1] <= feed_ms(SPIKES_S[0][1])
    assert feed_ms(SPIKES_S[1][0]) <= second[0][1] <= feed_ms(SPIKES_S[1][1])
    # open from its MIN_POINTS-th point while the newest sample is at most resolve_after_s
    # past its last point, resolved from the first sample beyond that
    last_ms = first[-1][1]
    for at_ms, status in first_status.items():
        if at_ms < first[MIN_POINTS - 1][1]:
            assert status is None, at_ms
        elif at_ms - last_ms <= RESOLVE_AFTER_S * 1000:
            assert status == "open", at_ms
        else:
            assert status == "resolved", at_ms

    # refreshed while it lasts (the clock moves with the feed), not only opened and closed
    assert 1 < max(open_points) <= len(first)

    events = episode_events(store)
    assert len(events) == 2 and len({e.event_id for e in events}) == 2
    for event, points in zip(events, (first, second), strict=True):
        assert event.kind == "anomaly" and event.device_id == HOT and event.status == "resolved"
        assert event.metrics[0] == "latency" and set(event.metrics) <= set(METRICS)
        assert event.payload["start_ms"] == points[0][1] and event.payload["end_ms"] == points[-1][1]
        assert event.payload["points"] == len(points)
        assert event.payload["max_score"] == pytest.approx(max(p[2] for p in points))
        assert event.payload["model_version"] == MODEL_VERSION
        assert to_ms(pd.Series([event.ts])).iloc[0] == points[0][1]
        assert "latency" in event.message


def test_one_batch_gives_the_same_episodes_as_tick_by_tick(detector, store, tmp_path):
    """Both spikes in one call: the gap between them closes the first episode inside the
    batch, the quiet end closes the second; the events equal the tick-by-tick ones."""
    feed = live_feed()
    LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9)).score(feed)
    reference = open_store(f"sqlite:///{tmp_path}/ticks.db")
    clock = Clock()
    tick_scorer = LiveScorer(detector, reference, eyenet_config(), MODEL_VERSION, now_s=clock)
    for ts_s, rows in ticks(feed):
        clock.now = ts_s
        tick_scorer.score(rows)

    def view(store_):
        return [(e.event_id, e.status, e.device_id, e.metrics, e.payload["start_ms"], e.payload["end_ms"],
                 e.payload["points"]) for e in episode_events(store_)]

    assert len(view(store)) == 2
    assert view(store) == view(reference)
    for a, b in zip(episode_events(store), episode_events(reference), strict=True):
        assert a.payload["max_score"] == pytest.approx(b.payload["max_score"], abs=1e-5)
    reference.close()


def test_flush_writes_the_current_state_of_open_episodes(detector, store, monkeypatch):
    """With a clock that stands still nothing is refreshed after the opening write; flush
    writes the episode as it is now, still open, under the same id."""
    writes = []
    upsert = store.upsert_event
    monkeypatch.setattr(store, "upsert_event", lambda event: writes.append(event) or upsert(event))
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    feed = live_feed()
    t = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    anomalies: list = []
    for _, rows in ticks(feed[t <= SPIKES_S[0][1] + 5]):
        anomalies += live.score(rows)[1].anomalies
    assert len(anomalies) > MIN_POINTS
    (stored,) = store.list_events(kind="anomaly")
    assert stored.payload["points"] == MIN_POINTS and len(writes) == 1
    live.flush()
    (flushed,) = store.list_events(kind="anomaly")
    assert len(writes) == 2 and flushed.event_id == stored.event_id
    assert flushed.status == "open"
    assert flushed.payload["points"] == len(anomalies)
    assert flushed.payload["end_ms"] == anomalies[-1][1]
    assert live.stats()["open_episodes"] == 1


def test_flush_without_open_episodes_writes_nothing(detector, store):
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    feed = live_feed()
    live.score(feed[feed["device_id"] == CALM])
    live.flush()
    assert store.list_events() == []
    assert live.stats()["totals"].get("events_written", 0) == 0


# -- the batch summary ------------------------------------------------------------------------

def test_summary_counts_devices_windows_anomalies_and_feature_bins(detector, store):
    clock = Clock(2e9, step=0.25)  # each reading 0.25 s after the last: 250 ms per batch
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=clock)
    feed = live_feed()
    t = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    live.score(feed[t < 50])
    batch = feed[t.between(50, 99)]
    scores, summary = live.score(batch)

    assert isinstance(summary, ScoreSummary)
    assert summary.device_counts == {HOT: 50, CALM: 50}
    assert len(scores) == 100
    assert summary.n_windows == int(scores["raw_score"].notna().sum()) == 100  # rows with a window
    assert summary.latency_ms == pytest.approx(250.0)
    assert summary.sent_at_s == pytest.approx(2e9 + 2 * 0.25 + 0.25)  # the second batch's "done"
    assert summary.model_version == MODEL_VERSION
    flagged = scores[scores["is_anomaly"]]
    assert len(flagged) > 0 and set(flagged["device_id"]) == {HOT}
    expected = [(HOT, int(ts), pytest.approx(float(s))) for ts, s in
                zip(to_ms(flagged["timestamp"]), flagged["score"], strict=True)]
    assert [(d, ts, s) for d, ts, s, _ in summary.anomalies] == expected
    for device, ts_ms, score, metrics in summary.anomalies:
        assert isinstance(device, str) and isinstance(ts_ms, int) and isinstance(score, float)
        assert metrics and set(metrics) <= set(METRICS) and len(set(metrics)) == len(metrics)
        assert feed_ms(SPIKES_S[0][0]) <= ts_ms < feed_ms(99)
    assert summary.anomalies[0][3][0] == "latency"
    # each device's newest score and threshold, for /metrics (the pool's batches carry them too)
    newest = scores.groupby("device_id").tail(1).set_index("device_id")
    assert summary.scores == pytest.approx(newest["score"].to_dict())
    assert summary.thresholds == pytest.approx(newest["threshold"].to_dict())

    assert list(summary.feature_counts) == detector.feature_names
    for name, counts in summary.feature_counts.items():
        assert sum(counts) == len(scores), name
        edges = np.asarray(detector.reference[name]["bin_edges"])
        values = batch[name].to_numpy(np.float32).astype(np.float64)  # features are float32
        want = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        assert counts == want.tolist(), name


def test_summary_of_an_empty_batch_is_empty(detector, store):
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    feed = live_feed()
    live.score(feed.iloc[:40])
    scores, summary = live.score(feed.iloc[:0])
    assert scores.empty and summary.n_windows == 0
    assert summary.device_counts == {} and summary.anomalies == []
    # regression: an empty batch once re-sent the previous batch's feature counts (drift
    # would have counted those rows twice)
    assert sum(sum(c) for c in summary.feature_counts.values()) == 0


def test_resent_samples_still_in_the_buffer_are_not_scored_again(detector, store):
    """A restarted collector re-forwards the span it wrote but had not yet checkpointed;
    samples already scored must be skipped, not fail the batch."""
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    feed = live_feed()
    live.score(feed.iloc[:40])
    # regression: a batch of already-buffered samples once failed with "frame has no rows"
    scores, summary = live.score(feed.iloc[38:40])
    assert scores.empty and summary.n_windows == 0 and summary.anomalies == []


def test_an_episode_of_fewer_points_than_an_alert_needs_writes_no_event(detector, store):
    """The smoothed score grazing its threshold for a point or two is counted, not shown:
    no event, as no device anomaly alert opens for it either."""
    cfg = eyenet_config()
    live = LiveScorer(detector, store, cfg, MODEL_VERSION, now_s=Clock(1e9))
    for ts_ms in (1_000, 2_000):
        live._extend_episode(HOT, ts_ms, 0.6, ["latency"], 1.0)
    gap_ms = int(cfg.alerts.resolve_after_s * 1000)
    live._extend_episode(HOT, 2_000 + gap_ms + 1_000, 0.6, ["latency"], 2.0)  # the short one ends
    assert store.list_events(kind="anomaly") == []
    assert live.totals["episodes_below_min_points"] == 1
    for ts_ms in range(cfg.alerts.anomaly_min_points - 1):
        live._extend_episode(HOT, 2_000 + gap_ms + 2_000 + ts_ms * 1000, 0.7, ["latency"], 3.0)
    (event,) = store.list_events(kind="anomaly")
    assert event.status == "open" and event.payload["points"] == cfg.alerts.anomaly_min_points


def test_a_pool_started_mid_stream_primes_each_device_from_the_store(detector, store):
    """The rows the collectors stored before the pool started prime each device's profile:
    its first live scores are offline scoring's with that history; a store that fails the
    read leaves the devices unprimed, counted, and scoring goes on."""
    feed = live_feed()
    seconds = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    before, after = feed[seconds < 20], feed[(seconds >= 20) & (seconds < 50)]
    store.write_samples(before)
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    scores = pd.concat([live.score(rows)[0] for _, rows in ticks(after)], ignore_index=True)
    offline = detector.score(after, history=before)
    np.testing.assert_allclose(scores.sort_values(["device_id", "timestamp"])["score"], offline["score"],
                               atol=1e-5)
    assert live.totals["unprimed_devices"] == 0

    class Failing:
        def __getattr__(self, name):
            return getattr(store, name)

        def read_range(self, *args, **kwargs):
            raise StoreError("database is locked")

    unprimed = LiveScorer(detector, Failing(), eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    scores = pd.concat([unprimed.score(rows)[0] for _, rows in ticks(after)], ignore_index=True)
    assert len(scores) == len(after) and unprimed.totals["unprimed_devices"] == 2



def test_a_scorer_restarted_inside_an_episode_takes_it_up_instead_of_opening_a_second(detector, store):
    """Regression: a feature actor killed in the middle of an incident came back with no
    episodes, so the incident got a second anomaly event and the first stayed open for ever
    (the chaos soak: 3 of 5 incidents had two events). The restarted scorer finds the open
    event of each device it meets and goes on with it: one event, resolved when the device
    has been quiet; the same incident scored without a restart gives the same event."""
    feed = live_feed()
    seconds = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    spike_start = SPIKES_S[0][0]
    before = feed[seconds < spike_start + 5]           # the spike has begun: its episode is open
    after = feed[(seconds >= spike_start + 5) & (seconds < 150)]
    store.write_samples(before)
    first = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    for _, rows in ticks(before):
        first.score(rows)
    [opened] = episode_events(store, HOT)
    assert opened.status == "open"
    # the actor dies here: nothing flushed; a new one (as Ray restarts it) scores what follows
    restarted = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    for _, rows in ticks(after):
        restarted.score(rows)
    [event] = episode_events(store, HOT)
    assert event.event_id == opened.event_id and event.status == "resolved"
    assert restarted.totals["episodes_resumed"] == 1
    unbroken = open_store("sqlite:///:memory:")
    whole = LiveScorer(detector, unbroken, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    for _, rows in ticks(feed[seconds < 150]):
        whole.score(rows)
    [reference] = episode_events(unbroken, HOT)
    assert (event.payload["start_ms"], event.payload["end_ms"]) == \
        (reference.payload["start_ms"], reference.payload["end_ms"])
    # the points counted after the event's last write died with the actor
    assert 0 < event.payload["points"] <= reference.payload["points"]


def test_an_open_episode_older_than_the_quiet_stretch_is_resolved_when_its_device_returns(detector, store):
    """A pool that comes back long after it stopped mid-episode closes that event instead of
    leaving it open or extending it over the gap."""
    feed = live_feed()
    seconds = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    early = feed[seconds < SPIKES_S[0][0] + 5]
    first = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    for _, rows in ticks(early):
        first.score(rows)
    first.flush()
    later = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=Clock(1e9))
    later.score(feed[(seconds >= 120) & (seconds < 121)])
    [event] = episode_events(store, HOT)
    assert event.status == "resolved" and later.totals["episodes_closed_on_resume"] == 1
    assert HOT not in later.episodes


# -- stats --------------------------------------------------------------------------------------

def test_stats_totals_and_reset(detector, store, monkeypatch):
    writes = []
    upsert = store.upsert_event
    monkeypatch.setattr(store, "upsert_event", lambda event: writes.append(event) or upsert(event))
    clock = Clock()
    live = LiveScorer(detector, store, eyenet_config(), MODEL_VERSION, now_s=clock)
    feed = live_feed()
    t = (feed["timestamp"] - feed["timestamp"].min()).dt.total_seconds()
    anomalies = 0
    calls = ticks(feed[t < 100])
    for ts_s, rows in calls:
        clock.now = ts_s + 2.0            # every sample is scored 2 s after its timestamp
        anomalies += len(live.score(rows, polled_at_s=clock.now - 0.5)[1].anomalies)

    stats = live.stats()
    window = detector.config.window_steps
    assert stats["totals"] == {"samples": 200, "windows": 200 - 2 * window, "anomalies": anomalies,
                               "events_written": len(writes)}
    assert anomalies > 0 and len(writes) >= 1
    assert stats["devices"] == 2 and stats["model_version"] == MODEL_VERSION
    assert stats["open_episodes"] == len(store.list_events(kind="anomaly", status="open"))
    assert stats["sample_age_ms"]["count"] == 200
    assert stats["sample_age_ms"]["mean_ms"] == pytest.approx(2000.0, abs=1e-3)
    assert stats["poll_to_score_ms"]["count"] == len(calls) == 100
    assert stats["poll_to_score_ms"]["mean_ms"] == pytest.approx(500.0, abs=1e-3)

    open_before = stats["open_episodes"]
    live.reset_stats()
    after = live.stats()
    assert after["totals"] == {}
    assert after["sample_age_ms"]["count"] == 0 and after["poll_to_score_ms"]["count"] == 0
    assert after["devices"] == 2 and after["open_episodes"] == open_before  # stream state is kept
    ts_s, rows = ticks(feed[t == 100])[0]
    clock.now = ts_s + 2.0
    live.score(rows)
    assert live.stats()["totals"]["samples"] == 2 and live.stats()["totals"]["windows"] == 2
