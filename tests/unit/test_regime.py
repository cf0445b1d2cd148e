"""Regime tracking: a device that moves to a new normal level raises one regime_change and
is then judged against the new level; spikes, cycles and incidents shorter than the
adaptation time never move the baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.detection.detector import Detector
from eyenet.detection.regime import RegimeState, RegimeTracker, training_deviation
from eyenet.streaming.live import LiveScorer
from eyenet.streaming.scorer import StreamScorer
from tests.helpers import Clock, live_scorer
from tests.synthetic import METRICS, config, telemetry

ADAPT_S = 120          # 1 s samples: 120 rows
SHIFT_AT, SPIKE_AT, FEED = 100, 420, 600


def devices(n: int) -> np.ndarray:
    return np.array(["d"] * n, dtype=object)


def test_a_held_step_moves_the_baseline_once_and_a_spike_never_does():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, (800, 2))
    z[100:110, 1] += 20.0          # a 10-row spike on feature 1
    z[300:, 0] += 10.0             # feature 0 moves to a new level and stays
    tracker = RegimeTracker(adapt_steps=100)
    adapted, changes = tracker.apply(z, devices(len(z)))
    assert [c.features for c in changes] == [[0]]
    assert 300 + 100 <= changes[0].row <= 300 + 150    # after adapt_steps of the new level
    assert abs(adapted[changes[0].row + 20:, 0].mean()) < 0.5   # judged against the new level
    assert adapted[100:110, 1].min() > 15                        # the spike is untouched
    np.testing.assert_allclose(adapted[:300], z[:300], atol=1e-5)


def test_a_cycle_and_a_short_incident_are_not_regimes():
    t = np.arange(3000)
    z = np.c_[5.0 * np.sin(2 * np.pi * t / 200), np.zeros(len(t))]
    z[1000:1080, 1] = 8.0           # an incident shorter than adapt_steps
    _, changes = RegimeTracker(adapt_steps=120).apply(z, devices(len(z)))
    assert changes == []


def test_a_return_to_the_old_level_is_a_second_change():
    z = np.zeros((1000, 1))
    z[200:600, 0] = 12.0
    _, changes = RegimeTracker(adapt_steps=100).apply(z, devices(len(z)))
    assert len(changes) == 2 and changes[1].row > 600


def test_state_carried_between_calls_equals_one_pass():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (600, 3))
    z[200:, 2] -= 8.0
    whole, whole_changes = RegimeTracker(adapt_steps=80).apply(z, devices(len(z)))
    tracker = RegimeTracker(adapt_steps=80)
    parts, rows = [], 0
    for chunk in np.array_split(np.arange(600), 7):
        out, changes = tracker.apply(z[chunk], devices(len(chunk)))
        parts.append(out)
        rows += sum(1 for _ in changes)
    np.testing.assert_allclose(np.vstack(parts), whole, atol=1e-6)
    assert rows == len(whole_changes) == 1
    state = tracker.states["d"]
    assert RegimeState.from_dict(state.to_dict()).to_dict() == state.to_dict()


def test_a_spiky_metric_is_judged_by_its_own_noise_not_its_standard_deviation():
    """Flat with rare bursts in training: its standard deviation (the scale) is mostly the
    bursts. A move of 3 standard deviations is then 20 times its normal noise: a regime."""
    rng = np.random.default_rng(3)
    train = np.where(rng.random(5000) < 0.02, 6.0, 0.0) + rng.normal(0, 0.1, 5000)
    train = (train - np.median(train)) / train.std()
    reference = training_deviation(train[:, None])
    assert reference[0] < 0.3
    live = np.r_[train[:500], 3.0 + rng.normal(0, 0.6, 1500)][:, None]
    tracker = RegimeTracker(adapt_steps=200, reference=reference)
    out, changes = tracker.apply(live, devices(len(live)))
    assert len(changes) == 1 and 700 <= changes[0].row <= 900
    assert abs(out[changes[0].row + 50:, 0].mean()) < 1.0
    # without its own noise as reference (the standard-normal guess), the move stays under the band
    _, unaware = RegimeTracker(adapt_steps=200).apply(live, devices(len(live)))
    assert unaware == []


def test_noise_alone_several_times_training_is_a_regime_and_its_end_another():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 1, (3000, 1))
    z[500:2000] *= 6.0
    tracker = RegimeTracker(adapt_steps=300, reference=np.array([0.8]))
    out, changes = tracker.apply(z, devices(len(z)))
    assert changes[0].row in range(800, 1000)
    assert changes[0].ratio[0] > 4.0
    assert np.std(out[1100:1900, 0]) < 2.0          # judged with the new spread
    assert len(changes) == 2 and changes[1].row > 2000   # back to quiet, back to spread 1


# -- through the detector, the stream scorer and the live scorer ------------------------------

def shifted_feed() -> tuple[pd.DataFrame, np.ndarray]:
    """r1 after training: cpu moves +60 (about 8 spreads) at SHIFT_AT s and stays; a latency
    spike at SPIKE_AT s, inside the new regime."""
    feed = telemetry(FEED, start_s=600, seed=4, devices=("r1",))
    feed.loc[SHIFT_AT:, "cpu"] += 60.0
    feed.loc[SPIKE_AT:SPIKE_AT + 4, "latency"] += 100.0
    spike = np.zeros(len(feed), bool)
    spike[SPIKE_AT:SPIKE_AT + 5] = True
    return feed, spike


@pytest.fixture(scope="module")
def adaptive() -> Detector:
    return Detector(config(kind="pca", adapt_after_s=ADAPT_S), METRICS, gap_s=5).fit(telemetry())


def test_a_level_shift_alerts_then_scores_normal_and_a_spike_in_the_new_regime_is_found(adaptive):
    feed, spike = shifted_feed()
    rows = adaptive.score_rows(feed)
    events = rows.regime_events()
    assert len(events) == 1 and events[0][2] == ["cpu"]
    adopted = int(np.flatnonzero(rows.features.timestamps_ms == events[0][1])[0])
    assert SHIFT_AT + ADAPT_S <= adopted <= SHIFT_AT + 2 * ADAPT_S
    assert rows.is_anomaly[SHIFT_AT + 10:adopted].mean() > 0.9       # the move itself alerts
    settle = adopted + 2 * adaptive.config.smoothing                  # the error profile forgets
    quiet = np.zeros(len(feed), bool)
    quiet[settle:] = True
    quiet[SPIKE_AT:SPIKE_AT + 4 * adaptive.config.smoothing] = False
    assert rows.is_anomaly[quiet].mean() < 0.02
    assert rows.is_anomaly[spike].all()
    assert {t[0] for t in rows.top_features(np.flatnonzero(spike))} == {"latency"}


def test_without_adaptation_the_new_level_alerts_for_ever(adaptive):
    """The alert storm the tracker exists to end."""
    import copy

    fixed = copy.deepcopy(adaptive)
    fixed.config.adapt_after_s = None
    feed, _ = shifted_feed()
    rows = fixed.score_rows(feed)
    assert rows.regime_events() == []
    assert rows.is_anomaly[SHIFT_AT + 10:].mean() > 0.9


def test_the_stream_scorer_and_the_live_scorer_adapt_alike_and_leave_one_event(adaptive, tmp_path):

    feed, _ = shifted_feed()
    offline = adaptive.score(feed)
    store, live = live_scorer(adaptive, tmp_path, METRICS)
    parts = [live.score(rows)[0] for _, rows in feed.groupby(np.arange(len(feed)) // 25)]
    streamed = pd.concat(parts, ignore_index=True)
    np.testing.assert_array_equal(streamed["is_anomaly"].to_numpy(), offline["is_anomaly"].to_numpy())
    events = store.list_events(device_id="r1")
    kinds = sorted(e.kind for e in events)
    regime = [e for e in events if e.kind == "regime_change"]
    assert len(regime) == 1 and regime[0].metrics == ["cpu"]
    # the anomaly episode the move opened became the regime_change event
    assert regime[0].payload["anomaly_points"] > 0
    assert kinds.count("anomaly") >= 1       # the spike in the new regime is its own episode
    assert isinstance(live.stream, StreamScorer) and live.totals["regime_changes"] == 1


def test_a_fresh_tracker_over_too_few_rows_cannot_change_anything(adaptive):
    """The stateless paths skip the tracker exactly: it could not have moved."""
    z = np.random.default_rng(2).normal(0, 1, (50, 2)) + 30.0
    tracker = RegimeTracker(adapt_steps=60)
    assert not tracker.can_change(devices(len(z)))
    out, changes = tracker.apply(z, devices(len(z)))
    np.testing.assert_allclose(out, z, rtol=1e-6)
    assert changes == [] and tracker.can_change(devices(1))  # it holds state now
    feed, _ = shifted_feed()
    window = feed.iloc[SHIFT_AT + 50:SHIFT_AT + 90]
    assert adaptive.score_rows(window).regime_changes == []


def test_serve_judges_a_window_in_the_regime_the_pool_keeps(adaptive, tmp_path):
    """The pool saves each regime change in the store; a Serve replica's scoring of the
    device's live window then follows it (and a restarted pool picks it up)."""
    from eyenet.detection.device_state import load_device_state
    from eyenet.serving.inference import CheckedWindows, InferenceService

    feed, _ = shifted_feed()
    store, live = live_scorer(adaptive, tmp_path, METRICS)
    before_spike = feed.iloc[:SPIKE_AT - 20]
    for _, rows in before_spike.groupby(np.arange(len(before_spike)) // 25):
        live.score(rows)
    saved = load_device_state(store, RegimeState, "r1", adaptive.feature_names)
    assert saved is not None and saved.changes == 1
    window = before_spike.tail(adaptive.config.window_steps + 1 + adaptive.config.smoothing)
    checked = CheckedWindows.from_frame(window, ["r1"], [len(window)], METRICS)
    following = InferenceService(adaptive, 1, store=store).score_checked(checked)[0]
    unaware = InferenceService(adaptive, 1).score_checked(checked)[0]
    assert not following["is_anomaly"] and unaware["is_anomaly"]
    restarted = LiveScorer(adaptive, store, live.config, now_s=Clock())
    restarted.score(feed.iloc[SPIKE_AT - 20:SPIKE_AT - 19])
    assert restarted.stream.regimes.states["r1"].changes == 1


def test_the_scored_frame_names_the_adopted_features_at_the_change(adaptive):
    """What eyenet detect writes: the regime_change column names the features at the row
    where their new level was adopted, and is empty elsewhere."""
    feed, _ = shifted_feed()
    out = adaptive.score(feed)
    changed = out[out["regime_change"] != ""]
    assert changed["regime_change"].tolist() == ["cpu"]
    assert SHIFT_AT + ADAPT_S <= changed.index[0] <= SHIFT_AT + 2 * ADAPT_S


def test_many_devices_in_one_call_step_as_each_would_alone():
    """A live call steps thousands of devices together, one row of each at a time: every
    device must end where a tracker of its own rows would, changes and undo included."""
    rng = np.random.default_rng(7)
    n_devices, n_rows = 6, 300
    series = {f"d{i}": rng.normal(0, 1, (n_rows, 3)) for i in range(n_devices)}
    for i, z in enumerate(series.values()):
        z[40 + 30 * i:, i % 3] += 9.0                    # each device shifts at its own time
    together, alone = RegimeTracker(adapt_steps=25), RegimeTracker(adapt_steps=25)
    seen = dict.fromkeys(series, 0)
    for call in range(12):
        rows, keys, ts, advance = [], [], [], []
        for i, (device, z) in enumerate(series.items()):
            old, new = 3, (call * 7 + i * 5) % 40          # a few rows again, then new ones
            a, b = max(0, seen[device] - old), min(n_rows, seen[device] + new)
            rows.append(z[a:b])
            keys += [device] * (b - a)
            ts += list(range(a * 1000, b * 1000, 1000))
            advance.append(np.arange(a, b) >= seen[device])
            seen[device] = max(seen[device], b)
        z, keys, ts = np.vstack(rows), np.array(keys, dtype=object), np.array(ts)
        advance = np.concatenate(advance)
        out, changes = together.apply(z, keys, advance, ts)
        for device in series:
            mine = keys == device
            if not mine.any():
                continue
            own, own_changes = alone.apply(z[mine], keys[mine], advance[mine], ts[mine])
            np.testing.assert_array_equal(out[mine], own)
            offset = int(np.flatnonzero(mine)[0])
            assert [(c.row - offset, c.features, c.ratio) for c in changes if keys[c.row] == device] == \
                [(c.row, c.features, c.ratio) for c in own_changes]
    assert sum(s.changes for s in together.states.values()) >= n_devices
    assert {d: s.to_dict() for d, s in together.states.items()} == \
        {d: s.to_dict() for d, s in alone.states.items()}
