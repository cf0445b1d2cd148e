"""Per-device scaling and cold start: each device is judged in its own units; a device the
model never saw learns its scale first (learning: scored, never alerting), and what it
learned survives a restart of the scorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.detection.detector import Detector
from eyenet.detection.device_scaling import DeviceScaler, DeviceStats, log_prepared
from eyenet.detection.device_state import load_device_state, save_device_state
from eyenet.detection.features import Scaler
from eyenet.streaming.live import LiveScorer
from eyenet.streaming.scorer import StreamScorer
from tests.helpers import Clock, live_scorer
from tests.synthetic import METRICS, config, telemetry

LEARN_S = 120


def scaled_fleet(n: int = 600, start_s: int = 0, seed: int = 0) -> pd.DataFrame:
    """Two devices of the same shape, one a hundred times the other's size."""
    frame = telemetry(n, start_s=start_s, seed=seed, devices=("small", "big"))
    big = frame["device_id"] == "big"
    frame.loc[big, METRICS] *= 100.0
    return frame


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(config(kind="pca", learn_s=LEARN_S), METRICS, gap_s=5).fit(scaled_fleet())


def test_each_trained_device_is_judged_in_its_own_scale(detector):
    out = detector.score(scaled_fleet(300, start_s=600, seed=1))
    assert set(detector.scaling.devices) == {"small", "big"}
    assert not out["learning"].any()
    for device in ("small", "big"):
        mine = out[(out["device_id"] == device) & out["raw_score"].notna()]
        assert mine["is_anomaly"].mean() < 0.05, device


def test_fleet_scaling_alone_would_misjudge_both():
    """The problem per-device scaling solves: one scale for a small and a big device."""
    frame = scaled_fleet()
    x = frame[METRICS].to_numpy()
    fleet = Scaler.fit(x)
    per_device = DeviceScaler.fit(x, frame["device_id"].to_numpy(), np.zeros(len(METRICS), bool))
    small = (frame["device_id"] == "small").to_numpy()
    assert np.abs(fleet.transform(x[small])).mean() > 0.5     # the small one sits far off centre
    assert np.abs(per_device.devices["small"].transform(x[small])).mean() < 1.0


def test_log_scaling_makes_a_multiple_an_offset():
    values = np.array([[10.0, 5.0], [1000.0, 5.0], [-3.0, 5.0]])
    out = log_prepared(values, np.array([True, False]))
    np.testing.assert_allclose(out[:, 0], np.log1p([10.0, 1000.0, 0.0]))
    np.testing.assert_array_equal(out[:, 1], values[:, 1])


def unseen_feed(seed: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    """A device the model never saw, 30 times the size of any trained one, with a latency
    spike during its learning period and one after it."""
    feed = telemetry(400, start_s=2000, seed=seed, devices=("newcomer",))
    feed[METRICS] *= 30.0
    spikes = np.zeros(len(feed), bool)
    for at in (40, 300):
        spikes[at:at + 5] = True
    feed.loc[spikes, "latency"] *= 6.0
    return feed, spikes


def test_an_unseen_device_learns_then_is_judged_in_its_own_scale(detector):
    feed, spikes = unseen_feed()
    out = detector.score(feed)
    learning = out["learning"].to_numpy()
    assert learning[:LEARN_S].all() and not learning[LEARN_S + 1:].any()
    assert not out.loc[learning, "is_anomaly"].any()            # the early spike never alerts
    assert (out.loc[learning, "score"] > 0).any()               # ... though it is scored
    judged = out[~learning & out["raw_score"].notna().to_numpy()]
    assert out["is_anomaly"].to_numpy()[spikes & ~learning].all()
    quiet = judged[~spikes[judged.index] & (judged.index < 300)]
    assert quiet["is_anomaly"].mean() < 0.05


def test_the_stream_scorer_learns_alike_and_a_restart_keeps_what_was_learned(detector, tmp_path):

    feed, _ = unseen_feed()
    offline = detector.score(feed)
    store, live = live_scorer(detector, tmp_path, METRICS)
    first, rest = feed.iloc[:200], feed.iloc[200:]
    parts = [live.score(rows)[0] for _, rows in first.groupby(np.arange(len(first)) // 20)]
    assert live.totals["devices_learned"] == 1
    saved = load_device_state(store, DeviceStats, "newcomer", detector.feature_names)
    assert isinstance(saved, DeviceStats) and saved.learned_at_ms > 0
    # a new scorer (the actor restarted) finds the learned scale in the store: no relearning
    restarted = LiveScorer(detector, store, live.config, now_s=Clock())
    restarted.stream._devices = live.stream._devices        # the buffered window, as collectors resend it
    parts += [restarted.score(rows)[0] for _, rows in rest.groupby(np.arange(len(rest)) // 20)]
    streamed = pd.concat(parts, ignore_index=True)
    np.testing.assert_array_equal(streamed["learning"].to_numpy(), offline["learning"].to_numpy())
    np.testing.assert_array_equal(streamed["is_anomaly"].to_numpy(), offline["is_anomaly"].to_numpy())
    assert restarted.totals.get("devices_learned", 0) == 0


def test_saved_statistics_of_other_features_are_not_used(detector, tmp_path):
    from eyenet.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/s.db")
    stats = DeviceStats(Scaler(np.zeros(2), np.ones(2)), 5)
    save_device_state(store, "x", ["a", "b"], stats)
    assert load_device_state(store, DeviceStats, "x", detector.feature_names) is None
    assert load_device_state(store, DeviceStats, "x", ["a", "b"]).learned_at_ms == 5


def test_a_stream_scorer_without_a_store_learns_in_memory(detector):
    feed, _ = unseen_feed()
    stream = StreamScorer(detector)
    out = pd.concat([stream.update(rows) for _, rows in feed.groupby(np.arange(len(feed)) // 50)])
    assert out["learning"].sum() == LEARN_S + 1
    assert "newcomer" in stream.cold.learned


def test_scaling_round_trips_with_the_model(detector, tmp_path):
    loaded = Detector.load(detector.save(tmp_path / "m"))
    assert loaded.scaling.to_dict() == detector.scaling.to_dict()
    feed, _ = unseen_feed()
    pd.testing.assert_frame_equal(loaded.score(feed), detector.score(feed))


def test_a_trained_device_with_less_history_than_a_learning_period_is_judged_in_the_fleet_scale():
    """Ten minutes of a device have seen ten minutes of its cycle: its own statistics are
    not trusted until its history spans learn_s; it is judged (never learning) meanwhile."""
    detector = Detector(config(kind="pca", learn_s=3600), METRICS, gap_s=5).fit(scaled_fleet(600))
    assert detector.scaling.devices == {} and set(detector.scaling.fleet_scaled) == {"small", "big"}
    out = detector.score(scaled_fleet(100, start_s=600, seed=1))
    assert not out["learning"].any()
    reloaded = DeviceScaler.from_dict(detector.scaling.to_dict())
    assert reloaded.fleet_scaled == detector.scaling.fleet_scaled


def test_many_unseen_devices_learn_in_one_call_as_each_would_alone(detector):
    """A live call holds many learning devices with a row or more each; they are learned
    together, each finishing at its own row with the statistics it would have alone."""
    rng = np.random.default_rng(5)
    feeds = {f"u{i}": scaled_fleet(400, start_s=1000, seed=10 + i).query("device_id == 'big'")
             .assign(device_id=f"u{i}") for i in range(5)}
    together, alone = detector.cold_start(), detector.cold_start()
    feats = {d: detector.features(f) for d, f in feeds.items()}
    at = dict.fromkeys(feeds, 0)
    while any(at[d] < len(feats[d].values) for d in feeds):
        parts = []
        for d in feeds:
            b = min(len(feats[d].values), at[d] + int(rng.integers(0, 30)))
            parts.append((d, slice(at[d], b)))
            at[d] = b
        values = np.vstack([feats[d].values[s] for d, s in parts])
        ids = np.concatenate([feats[d].device_ids[s] for d, s in parts])
        ts = np.concatenate([feats[d].timestamps_ms[s] for d, s in parts])
        segments = np.concatenate([feats[d].segments[s] + 1000 * i for i, (d, s) in enumerate(parts)])
        out = together.apply(values, ids, ts, segments)
        learned = []
        for d, _ in parts:
            mine = ids == d
            own = alone.apply(values[mine], ids[mine], ts[mine], segments[mine])
            np.testing.assert_array_equal(out.scaled[mine], own.scaled)
            np.testing.assert_array_equal(out.learning[mine], own.learning)
            learned += own.learned
        assert out.learned == learned
    assert set(together.learned) == set(feeds)
    assert {d: s.to_dict() for d, s in together.learned.items()} == \
        {d: s.to_dict() for d, s in alone.learned.items()}
