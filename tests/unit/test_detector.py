"""The Ray-free detector core: the LSTM networks, the training loop's pieces and the
Detector (fit, score, save/load) on small synthetic fleets."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from eyenet.detection.detector import FORMAT_VERSION, META_FILE, REFERENCE_FILE, WEIGHTS_FILE, Detector
from eyenet.detection.networks import HEAD_HIDDEN, LSTMDetectorNet, loss_fn, predict
from eyenet.detection.training import (
    EarlyStopping,
    array_batches,
    build_net,
    eval_loss,
    fit_in_process,
    seed_everything,
    train_epoch,
)
from eyenet.errors import ArtifactError, TelemetryError
from tests.synthetic import METRICS, T0, WINDOW, config, telemetry, test_frame

OUTPUT_COLUMNS = ["device_id", "timestamp", "score", "raw_score", "threshold", "is_anomaly",
                  "top_features", "top_feature", "learning", "regime_change"]


@pytest.fixture(scope="module")
def detector() -> Detector:
    """One small forecaster for the read-only tests of this module (tests copy it to change it)."""
    return Detector(config(), METRICS, gap_s=5).fit(telemetry())


# -- the network ----------------------------------------------------------------------------

def test_forecast_net_predicts_every_feature_of_the_next_step():
    """forecast: (batch, window, F) -> (batch, F), unbounded (a linear head)."""
    net = LSTMDetectorNet(5, hidden_size=8, num_layers=2, objective="forecast")
    assert net(torch.randn(4, 10, 5)).shape == (4, 5)
    assert isinstance(net.head[-1], nn.Linear) and net.head[-1].out_features == 5


def test_classify_net_keeps_the_seed_shape():
    """classify: LSTM -> Linear 32 -> ReLU -> Linear 1 -> Sigmoid, probabilities in (0, 1)."""
    net = LSTMDetectorNet(5, hidden_size=8, num_layers=1, objective="classify")
    assert isinstance(net.lstm, nn.LSTM) and net.lstm.hidden_size == 8 and net.lstm.num_layers == 1
    kinds = [type(layer) for layer in net.head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid]
    assert net.head[0].in_features == 8 and net.head[0].out_features == HEAD_HIDDEN == 32
    assert net.head[2].out_features == 1
    out = net(torch.randn(6, 10, 5))
    assert out.shape == (6, 1) and bool(((out > 0) & (out < 1)).all())


def test_build_net_follows_the_config():
    """hidden_size, num_layers and objective come from the DetectorConfig."""
    net = build_net(config(hidden_size=12, num_layers=2, objective="classify"), 4)
    assert net.lstm.input_size == 4 and net.lstm.hidden_size == 12 and net.lstm.num_layers == 2
    assert net.objective == "classify" and isinstance(net.head[-1], nn.Sigmoid)


def test_the_forecaster_forecasts_from_its_windows_mean():
    """A window moved by a constant per feature is forecast moved by the same constant, so
    no level is one the network has not seen; the classifier keeps absolute inputs."""
    torch.manual_seed(0)
    net = LSTMDetectorNet(3, hidden_size=8, num_layers=1, from_window_mean=True)
    x, shift = torch.randn(4, 10, 3), torch.tensor([5.0, -3.0, 40.0])
    torch.testing.assert_close(net(x + shift), net(x) + shift, rtol=0, atol=1e-4)
    absolute = LSTMDetectorNet(3, hidden_size=8, num_layers=1)
    assert not torch.allclose(absolute(x + shift), absolute(x) + shift, atol=1e-2)
    assert not LSTMDetectorNet(3, objective="classify", from_window_mean=True).from_window_mean
    assert build_net(config(forecast_from_window_mean=True), 3).from_window_mean
    assert not build_net(config(forecast_from_window_mean=False), 3).from_window_mean


@pytest.mark.parametrize("learn_s, expected", [(86400.0, True), (600.0, False)])
def test_training_decides_the_forecast_level_by_how_much_history_each_device_has(learn_s, expected):
    """Unset, ``forecast_from_window_mean`` is decided when the history is seen: 20 minutes of
    each device are less than a day (learn_s), so it forecasts from the window mean; the
    decision is saved in the model's config and its network."""
    det = Detector(config(learn_s=learn_s), METRICS, gap_s=5).fit(telemetry(1200))
    assert det.config.forecast_from_window_mean is expected
    assert det.model.network().from_window_mean is expected


def climbing(n: int, start_s: int, seed: int) -> pd.DataFrame:
    """One device whose cpu climbs steadily (a slice of its daily cycle) beside a sine."""
    rng = np.random.default_rng(seed)
    t = start_s + np.arange(n, dtype=np.float64)
    frame = pd.DataFrame({"device_id": "r1", "timestamp": T0 + pd.to_timedelta(t, unit="s")})
    frame["cpu"] = 50.0 + 0.01 * t + rng.normal(0, 0.5, n)
    frame["memory"] = 30.0 + 5.0 * np.sin(2 * np.pi * t / 40) + rng.normal(0, 0.5, n)
    return frame


@pytest.mark.parametrize("from_window_mean", [True, False])
def test_a_quiet_device_climbing_past_its_training_levels_stays_quiet(from_window_mean):
    """Regression: a quiet demo device whose bytes rate climbed on its daily cycle past the
    levels training had seen was flagged on 60 % of its points within a quarter of an hour.
    Forecasting from the window's mean it stays quiet; forecasting absolute levels, as
    before, the same device alarms nearly all the time."""
    history = climbing(1200, 0, seed=0)
    det = Detector(config(forecast_from_window_mean=from_window_mean, max_epochs=10), ["cpu", "memory"],
                   gap_s=5).fit(history)
    alarm_share = det.score(climbing(600, 1200, seed=10), history=history.tail(100))["is_anomaly"].mean()
    if from_window_mean:
        assert alarm_share < 0.05
    else:
        assert alarm_share > 0.5


def test_predict_batches_in_eval_mode_and_restores_the_mode():
    """predict == one forward pass in eval mode, however it batches; the net's mode is kept;
    no windows gives an empty (0, outputs) array."""
    net = LSTMDetectorNet(3, hidden_size=8, num_layers=2, dropout=0.5)
    windows = np.random.default_rng(0).normal(size=(10, 6, 3)).astype(np.float32)
    net.train()
    out = predict(net, windows, batch_size=3)
    assert net.training
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert predict(net, windows[:0]).shape == (0, 3)


# -- training pieces ------------------------------------------------------------------------

def test_early_stopping_counts_epochs_without_enough_gain():
    """An epoch counts as better only when it beats the best by more than min_delta; after
    `patience` epochs that do not, should_stop is set; a gain resets the count."""
    stop = EarlyStopping(patience=2, min_delta=0.1)
    assert stop.update(0, 1.0) and stop.best == 1.0 and stop.best_epoch == 0
    assert not stop.update(1, 0.95) and not stop.should_stop  # gain 0.05 < min_delta
    assert stop.update(2, 0.85) and stop.bad_epochs == 0 and stop.best_epoch == 2
    assert not stop.update(3, 0.9) and not stop.should_stop
    assert not stop.update(4, 0.8) and stop.should_stop  # gain 0.05 again
    assert stop.state() == {"best": 0.85, "best_epoch": 2, "bad_epochs": 2}


def test_early_stopping_never_takes_nan_as_an_improvement():
    """NaN or inf validation loss is never a new best, even as the first epoch."""
    stop = EarlyStopping(patience=2)
    assert not stop.update(0, float("nan"))
    assert stop.best == float("inf") and stop.best_epoch == -1
    assert stop.update(1, 3.0)
    assert not stop.update(2, float("nan")) and not stop.update(3, float("-inf"))
    assert stop.should_stop and stop.best == 3.0


def sine_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of sine waves with random phase and the next value as target."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    t = np.arange(WINDOW + 1)[None, :]
    wave = np.sin(2 * np.pi * t / 12 + phase).astype(np.float32)
    return wave[:, :WINDOW, None], wave[:, WINDOW:]


def test_train_epoch_and_eval_loss_return_mean_loss_and_count():
    """Both return (mean loss per sample, samples); the mean is over all samples, not batches;
    no batches gives (nan, 0)."""
    x, y = sine_windows(100, 0)
    seed_everything(0)
    net = build_net(config(), 1)
    loss = loss_fn("forecast")
    val, count = eval_loss(net, array_batches(x, y, 32), loss)
    assert count == 100
    with torch.no_grad():
        assert val == pytest.approx(float(loss(net(torch.from_numpy(x)), torch.from_numpy(y))), rel=1e-5)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    train, seen = train_epoch(net, array_batches(x, y, 32, torch.Generator().manual_seed(0)), optimizer, loss)
    assert seen == 100 and np.isfinite(train)
    empty_loss, empty_count = eval_loss(net, iter([]), loss)
    assert np.isnan(empty_loss) and empty_count == 0


def test_array_batches_cover_every_sample_once():
    """Shuffled mini-batches hold every sample exactly once, pairs kept together."""
    x = np.arange(10, dtype=np.float32)[:, None]
    batches = list(array_batches(x, x * 2, 4, torch.Generator().manual_seed(1)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    xs = torch.cat([b[0] for b in batches]).flatten().tolist()
    assert sorted(xs) == list(range(10)) and xs != list(range(10))
    assert all(torch.equal(bx * 2, by) for bx, by in batches)


def test_fit_in_process_is_deterministic_for_a_seed():
    """The same config and data give the same weights and history twice; another seed not."""
    train, val = sine_windows(256, 0), sine_windows(64, 1)
    cfg = config(max_epochs=2, batch_size=32)
    first, second = fit_in_process(cfg, train, val), fit_in_process(cfg, train, val)
    losses = [[(r["epoch"], r["train_loss"], r["val_loss"]) for r in fit.history] for fit in (first, second)]
    assert losses[0] == losses[1]
    assert first.state_dict.keys() == second.state_dict.keys()
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    other = fit_in_process(config(max_epochs=2, batch_size=32, seed=1), train, val)
    assert not all(torch.equal(first.state_dict[k], other.state_dict[k]) for k in first.state_dict)


def test_fit_in_process_learns_a_sine_wave():
    """On a learnable signal the best validation loss ends far below the untrained net's,
    and the best epoch's weights are the ones returned."""
    train, val = sine_windows(512, 0), sine_windows(128, 1)
    cfg = config(max_epochs=8, batch_size=32)
    seed_everything(cfg.seed)
    untrained, _ = eval_loss(build_net(cfg, 1), array_batches(*val, 4096), loss_fn("forecast"))
    result = fit_in_process(cfg, train, val)
    assert result.best_val_loss < 0.25 * untrained
    assert result.best_val_loss == min(row["val_loss"] for row in result.history)
    assert result.train_samples == 512 * len(result.history)
    net = build_net(cfg, 1)
    net.load_state_dict(result.state_dict)
    again, _ = eval_loss(net, array_batches(*val, 4096), loss_fn("forecast"))
    assert again == pytest.approx(result.best_val_loss, rel=1e-5)


def test_fit_in_process_stops_early():
    """With no epoch able to beat the first by min_delta, patience 1 stops after epoch 1."""
    seen = []
    result = fit_in_process(config(max_epochs=10, patience_epochs=1, min_delta=1e9),
                            sine_windows(64, 0), sine_windows(32, 1), on_epoch=seen.append)
    assert [row["epoch"] for row in seen] == [0, 1]
    assert result.best_epoch == 0 and result.best_val_loss == result.history[0]["val_loss"]


# -- Detector: fit and score ----------------------------------------------------------------

def test_score_has_one_row_per_input_row(detector):
    """Columns as documented, one row per input row ordered by device then time, scores in
    0..1, is_anomaly exactly where a scored row's score exceeds its threshold."""
    frame, _ = test_frame()
    out = detector.score(frame.sample(frac=1.0, random_state=0))
    assert list(out.columns) == OUTPUT_COLUMNS
    assert len(out) == len(frame)
    expected = frame.sort_values(["device_id", "timestamp"])
    assert out["device_id"].tolist() == expected["device_id"].tolist()
    assert (out["timestamp"].to_numpy() == expected["timestamp"].to_numpy()).all()
    assert out["score"].between(0.0, 1.0).all()
    assert (out["threshold"] == 0.5).all()
    scored = out["raw_score"].notna()
    assert out["is_anomaly"].tolist() == (scored & (out["score"] > out["threshold"])).tolist()
    assert all(len(t) == 3 for t in out.loc[scored, "top_features"])
    assert (out.loc[scored, "top_feature"] == out.loc[scored, "top_features"].str[0]).all()


def test_a_spike_scores_higher_and_names_its_metric(detector):
    """Rows of an injected latency spike score above every row away from it, are anomalous
    and name latency as their top feature."""
    frame, spike = test_frame()
    out = detector.score(frame)  # frame is already ordered by device then time
    spike_rows = out[spike]
    far = np.ones(len(out), bool)
    far[200 + 95:200 + 140] = False  # the spike, the window before it and its smoothed echo
    far &= out["raw_score"].notna().to_numpy()
    assert spike_rows["score"].min() > out.loc[far, "score"].max()
    assert spike_rows["raw_score"].min() > out.loc[far, "raw_score"].max()
    assert spike_rows["is_anomaly"].all()
    assert (spike_rows["top_feature"] == "latency").all()


def test_rows_without_a_full_window_are_not_scored(detector):
    """The first window_steps rows of each segment (each device, and after a gap) get score 0,
    no raw score and no features."""
    frame = telemetry(60, start_s=600, seed=2)
    frame = frame[~frame["timestamp"].between(T0 + pd.Timedelta(seconds=620),
                                              T0 + pd.Timedelta(seconds=629))]  # a 10 s gap
    out = detector.score(frame)
    for _, rows in out.groupby("device_id"):
        rows = rows.reset_index(drop=True)
        unscored = np.r_[0:WINDOW, 20:20 + WINDOW]  # segment starts: row 0 and row 20 (t=630 s)
        assert (rows.loc[unscored, "score"] == 0.0).all()
        assert rows.loc[unscored, "raw_score"].isna().all()
        assert rows.loc[unscored, "top_features"].map(len).eq(0).all()
        assert (rows.loc[unscored, "top_feature"] == "").all()
        assert not rows.loc[unscored, "is_anomaly"].any()
        scored = np.setdiff1d(np.arange(len(rows)), unscored)
        assert rows.loc[scored, "raw_score"].notna().all()
        assert rows.loc[scored, "top_feature"].isin(METRICS).all()


def test_history_gives_the_first_rows_their_context(detector):
    """With history=, every row of frame is scored as if history and frame were one frame,
    and only frame's rows come back."""
    frame, _ = test_frame()
    history = telemetry(600)
    history = history[history["timestamp"] >= T0 + pd.Timedelta(seconds=550)]
    out = detector.score(frame, history=history)
    assert len(out) == len(frame)
    assert out["raw_score"].notna().all() and out["top_features"].map(len).eq(3).all()
    together = detector.score(pd.concat([history, frame], ignore_index=True))
    together = together[together["timestamp"] >= T0 + pd.Timedelta(seconds=600)].reset_index(drop=True)
    pd.testing.assert_frame_equal(out, together)


def test_history_overlapping_the_frame_still_gives_one_row_per_input_row(detector):
    """A history buffer that already holds the frame's first rows does not duplicate them."""
    frame, _ = test_frame()
    history = pd.concat([telemetry(600), frame[frame["timestamp"] < T0 + pd.Timedelta(seconds=603)]])
    out = detector.score(frame, history=history)
    assert len(out) == len(frame)
    pd.testing.assert_frame_equal(out, detector.score(frame, history=telemetry(600)))


def test_frame_shorter_than_a_window_scores_zero(detector):
    """Too few rows to score anything: all scores 0, nothing anomalous, no error."""
    out = detector.score(telemetry(WINDOW - 1, start_s=600))
    assert len(out) == 2 * (WINDOW - 1)
    assert (out["score"] == 0.0).all() and not out["is_anomaly"].any()


def test_device_thresholds_override_the_threshold(detector):
    """A per-device threshold replaces 0.5 for that device only, and decides is_anomaly."""
    frame, _ = test_frame()
    default = detector.score(frame)
    strict = copy.deepcopy(detector)
    strict.rule.devices = {"r2": 0.999}  # the decision rule holds per-device thresholds
    out = strict.score(frame)
    r1, r2 = (out["device_id"] == "r1").to_numpy(), (out["device_id"] == "r2").to_numpy()
    assert (out.loc[r1, "threshold"] == 0.5).all() and (out.loc[r2, "threshold"] == 0.999).all()
    pd.testing.assert_series_equal(out["score"], default["score"])
    assert out.loc[r1, "is_anomaly"].tolist() == default.loc[r1, "is_anomaly"].tolist()
    assert out.loc[r2, "is_anomaly"].tolist() == (out.loc[r2, "score"] > 0.999).tolist()
    assert out.loc[r2, "is_anomaly"].sum() < default.loc[r2, "is_anomaly"].sum()


def test_training_skips_windows_touching_labelled_rows():
    """Forecast training drops every window whose inputs or target include a label=1 row, and
    the values of labelled rows never reach the scaler or the drift reference."""
    frame = telemetry(300)
    incident = (frame["device_id"] == "r1").to_numpy() & np.isin(np.arange(len(frame)), range(100, 105))
    frame["label"] = incident.astype(np.int8)
    clean = Detector(config(), METRICS, gap_s=5)
    clean_data = clean.prepare(frame)
    frame.loc[incident, METRICS] = 1e6
    det = Detector(config(), METRICS, gap_s=5)
    data = det.prepare(frame)
    flagged = data.features.flagged
    assert flagged.sum() == 5
    for t in data.train_targets:
        assert not flagged[t - WINDOW:t + 1].any(), f"window of row {t} touches a labelled row"
    targets = set(data.train_targets.tolist())
    assert set(range(WINDOW, 100)) <= targets           # windows ending before the incident stay
    assert not targets & set(range(100, 105 + WINDOW))  # every window touching it goes
    assert 105 + WINDOW in targets                      # and the first clean one after it is back
    np.testing.assert_array_equal(data.train_targets, clean_data.train_targets)
    np.testing.assert_array_equal(det.scaling.fleet.center, clean.scaling.fleet.center)
    np.testing.assert_array_equal(det.scaling.fleet.scale, clean.scaling.fleet.scale)
    for device, own in clean.scaling.devices.items():
        np.testing.assert_array_equal(det.scaling.devices[device].center, own.center)
    assert det.reference == clean.reference


def test_too_short_history_is_a_clear_error():
    """History too short for one training and one validation window raises TelemetryError
    saying so."""
    with pytest.raises(TelemetryError, match="not enough history"):
        Detector(config(), METRICS, gap_s=5).fit(telemetry(20))


def test_classify_needs_labelled_anomalies():
    """objective='classify' without any label=1 in training raises TelemetryError."""
    with pytest.raises(TelemetryError, match="label"):
        Detector(config(objective="classify"), METRICS, gap_s=5).fit(telemetry())


def test_classify_with_labels_trains_and_scores_probabilities():
    """With labelled spikes, the classifier trains and scores every row in 0..1."""
    frame = telemetry(600)
    rows = np.arange(len(frame)) % 600
    labelled = np.isin(rows % 50, range(20, 23))
    frame.loc[labelled, "latency"] += 100.0
    frame["label"] = labelled.astype(np.int8)
    det = Detector(config(objective="classify"), METRICS, gap_s=5).fit(frame)
    assert det.training["train_windows"] > 0
    test, _ = test_frame()
    out = det.score(test)
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == len(test)
    assert out["score"].between(0.0, 1.0).all()
    scored = out["raw_score"].notna()
    assert out.loc[scored, "raw_score"].between(0.0, 1.0).all()
    assert np.allclose(out.loc[scored, "score"], out.loc[scored, "raw_score"])


@pytest.mark.parametrize("n_metrics", [1, 38])
def test_fit_and_score_with_any_metric_count(n_metrics):
    """A single metric and 38 metrics both fit and score."""
    metrics = [f"m{i:02d}" for i in range(n_metrics)]
    det = Detector(config(max_epochs=1), metrics, gap_s=5).fit(telemetry(200, metrics=metrics))
    assert det.feature_names == metrics
    out = det.score(telemetry(40, start_s=200, seed=1, metrics=metrics))
    assert len(out) == 80 and out["score"].between(0.0, 1.0).all()
    scored = out["raw_score"].notna()
    assert out.loc[scored, "top_feature"].isin(metrics).all()
    assert out.loc[scored, "top_features"].map(len).eq(min(3, n_metrics)).all()


# -- Detector: save and load ----------------------------------------------------------------

def test_save_and_load_give_identical_scores(detector, tmp_path):
    """A loaded detector scores exactly as the saved one, per-device thresholds included."""
    saved = copy.deepcopy(detector)
    saved.rule.devices = {"r1": 0.7}
    path = saved.save(tmp_path / "model")
    assert {p.name for p in path.iterdir()} == {WEIGHTS_FILE, META_FILE, REFERENCE_FILE}
    loaded = Detector.load(path)
    frame, _ = test_frame()
    pd.testing.assert_frame_equal(loaded.score(frame), saved.score(frame))
    assert loaded.metrics == METRICS and loaded.gap_s == 5.0
    assert loaded.config == saved.config and loaded.feature_names == saved.feature_names
    assert loaded.reference == saved.reference and loaded.training == saved.training
    assert json.loads((path / META_FILE).read_text())["format_version"] == FORMAT_VERSION


def test_a_model_saved_before_window_mean_forecasts_still_forecasts_absolute_levels(tmp_path):
    """Artifacts saved before the setting existed have no ``forecast_from_window_mean`` in
    their config: they load as the absolute-level forecasters they were trained as."""
    det = Detector(config(forecast_from_window_mean=False), METRICS, gap_s=5).fit(telemetry())
    path = det.save(tmp_path / "model")
    meta = json.loads((path / META_FILE).read_text())
    del meta["config"]["forecast_from_window_mean"]
    (path / META_FILE).write_text(json.dumps(meta))
    loaded = Detector.load(path)
    assert not loaded.config.forecast_from_window_mean and not loaded.model.network().from_window_mean
    frame, _ = test_frame()
    pd.testing.assert_frame_equal(loaded.score(frame), det.score(frame))


def test_load_refuses_another_format_version(detector, tmp_path):
    """A detector.json of another format_version raises ArtifactError naming it."""
    path = detector.save(tmp_path / "model")
    meta = json.loads((path / META_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version"):
        Detector.load(path)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, META_FILE, REFERENCE_FILE])
def test_load_with_a_missing_file_is_an_artifact_error(detector, tmp_path, missing):
    """Any of the three files missing raises ArtifactError."""
    path = detector.save(tmp_path / "model")
    (path / missing).unlink()
    with pytest.raises(ArtifactError):
        Detector.load(path)


def test_load_of_a_missing_directory_is_an_artifact_error(tmp_path):
    """Loading from a directory that does not exist raises ArtifactError."""
    with pytest.raises(ArtifactError):
        Detector.load(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["drop_scaler", "other_features"])
def test_load_of_an_inconsistent_detector_is_an_artifact_error(detector, tmp_path, damage):
    """A detector.json that lacks a field, or describes a network its weights do not fit,
    raises ArtifactError like any other unreadable artifact."""
    path = detector.save(tmp_path / "model")
    meta = json.loads((path / META_FILE).read_text())
    if damage == "drop_scaler":
        del meta["scaling"]
    else:
        meta["feature_names"] = ["cpu"]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError):
        Detector.load(path)


def test_scoring_an_unfitted_detector_is_an_error():
    """score and save before fit/load raise TelemetryError saying so."""
    det = Detector(config(), METRICS, gap_s=5)
    with pytest.raises(TelemetryError, match="not fitted"):
        det.score(telemetry(20))
    with pytest.raises(TelemetryError, match="not fitted"):
        det.save("unused")
