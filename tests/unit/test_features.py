"""Feature engineering in eyenet.detection.features: ordering, ratios, missing values, segments,
flags, rolling statistics, the scaler, windows and the drift reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.detection.features import (
    ABSOLUTE_SCALE_FLOOR,
    CLIP_Z,
    PSI_BINS,
    Scaler,
    build_features,
    feature_names,
    feature_reference,
    metric_of,
    window_targets,
    windows_at,
)
from eyenet.errors import TelemetryError

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def frame(seconds, device="a", **metrics) -> pd.DataFrame:
    """One device's samples at ``seconds`` after T0, float metrics."""
    data = {"device_id": device, "timestamp": T0 + pd.to_timedelta(np.asarray(seconds, float), unit="s")}
    data.update({m: np.asarray(v, np.float64) for m, v in metrics.items()})
    return pd.DataFrame(data)


def column(feats, name) -> np.ndarray:
    return feats.values[:, feats.names.index(name)]


# -- build_features -------------------------------------------------------------------------

def test_float_metric_columns_are_accepted():
    """A plain frame of float metrics builds (regression: under pandas 3 copy-on-write the
    metric array was a read-only view and marking non-finite values raised ValueError)."""
    feats = build_features(frame([0, 1, 2], x=[1.0, 2.0, 3.0]), ["x"], gap_s=5)
    assert feats.values[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_rows_are_ordered_by_device_then_time():
    """Shuffled input comes out sorted by device, then timestamp, values following their rows."""
    data = pd.concat([frame([0, 1, 2], "b", x=[10.0, 11.0, 12.0]),
                      frame([5, 6, 7], "a", x=[20.0, 21.0, 22.0])], ignore_index=True)
    data = data.sample(frac=1.0, random_state=3)
    feats = build_features(data, ["x"], gap_s=5)
    assert feats.device_ids.tolist() == ["a", "a", "a", "b", "b", "b"]
    assert np.all(np.diff(feats.timestamps_ms[:3]) > 0) and np.all(np.diff(feats.timestamps_ms[3:]) > 0)
    assert feats.values[:, 0].tolist() == [20.0, 21.0, 22.0, 10.0, 11.0, 12.0]
    assert len(feats) == 6
    assert feats.timestamps_ms[0] == T0.value // 1_000_000 + 5000


def test_bytes_per_packet_is_zero_without_packets():
    """bytes/packets per direction; zero packets gives 0, never inf or NaN."""
    metrics = ["bytes_in", "bytes_out", "packets_in", "packets_out"]
    data = frame([0, 1, 2], bytes_in=[1000.0, 500.0, 0.0], bytes_out=[300.0, 0.0, 90.0],
                 packets_in=[10.0, 0.0, 0.0], packets_out=[3.0, 0.0, 0.0])
    feats = build_features(data, metrics, gap_s=5)
    assert feats.names == [*metrics, "bytes_per_packet_in", "bytes_per_packet_out"]
    assert column(feats, "bytes_per_packet_in").tolist() == [100.0, 0.0, 0.0]
    assert column(feats, "bytes_per_packet_out").tolist() == [100.0, 0.0, 0.0]
    assert np.isfinite(feats.values).all()


def test_ratio_features_need_both_halves():
    """A ratio feature exists only when numerator and denominator are both configured."""
    assert feature_names(["bytes_in", "packets_in", "latency"]) == [
        "bytes_in", "packets_in", "latency", "bytes_per_packet_in"]
    assert feature_names(["bytes_in", "bytes_out", "latency"]) == ["bytes_in", "bytes_out", "latency"]


def test_missing_values_take_the_previous_value_within_a_segment():
    """NaN and inf take the device's previous value; nothing is carried over a gap or to
    another device, where a segment that starts missing stays missing (0 once scaled)."""
    data = pd.concat([
        frame([0, 1, 2, 3, 100, 101], "a", x=[1.0, np.nan, np.inf, 4.0, np.nan, 6.0]),
        frame([0, 1], "b", x=[np.nan, 7.0]),
    ], ignore_index=True)
    feats = build_features(data, ["x"], gap_s=10)
    x = feats.values[:, 0]
    assert x[:4].tolist() == [1.0, 1.0, 1.0, 4.0]
    assert np.isnan(x[4]), "a value was carried across the gap"
    assert x[5] == 6.0
    assert np.isnan(x[6]), "device b took device a's last value"
    assert x[7] == 7.0
    scaled = Scaler.fit(feats.values).transform(feats.values)
    assert scaled[4, 0] == 0.0 and scaled[6, 0] == 0.0


def test_missing_ratio_inputs_are_missing_not_zero():
    """A ratio whose inputs are still missing (segment starts empty) is missing too."""
    data = frame([0, 1], bytes_in=[np.nan, 800.0], packets_in=[np.nan, 8.0])
    feats = build_features(data, ["bytes_in", "packets_in"], gap_s=5)
    ratio = column(feats, "bytes_per_packet_in")
    assert np.isnan(ratio[0]) and ratio[1] == 100.0


def test_a_gap_longer_than_gap_s_starts_a_new_segment():
    """Segments change at every silence longer than gap_s (not equal to it) and every device."""
    data = pd.concat([frame([0, 5, 10, 16, 17], "a", x=np.ones(5)),
                      frame([17, 18], "b", x=np.ones(2))], ignore_index=True)
    feats = build_features(data, ["x"], gap_s=5)
    assert feats.segments.tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_label_one_rows_are_flagged():
    """label=1 flags a row; 0, missing and absent labels do not."""
    data = frame([0, 1, 2, 3], x=[1.0, 2.0, 3.0, 4.0])
    data["label"] = pd.array([0, 1, None, 1], dtype="Int8")
    assert build_features(data, ["x"], gap_s=5).flagged.tolist() == [False, True, False, True]
    unlabelled = build_features(data.drop(columns="label"), ["x"], gap_s=5)
    assert not unlabelled.flagged.any()


def test_rolling_mean_and_std_over_the_last_rolling_s_seconds():
    """rolling_s adds <m>_mean_<s>s and <m>_std_<s>s over (t - rolling_s, t], per segment."""
    data = frame([0, 1, 2, 3, 10, 11], x=[1.0, 2.0, 3.0, 4.0, 10.0, 20.0], y=np.zeros(6))
    feats = build_features(data, ["x", "y"], gap_s=5, rolling_s=3)
    assert feats.names == ["x", "y", "x_mean_3s", "x_std_3s", "y_mean_3s", "y_std_3s"]
    mean, std = column(feats, "x_mean_3s"), column(feats, "x_std_3s")
    # row 3 (t=3 s) sees t=1, 2, 3: mean 3, population std sqrt(2/3)
    assert mean[3] == pytest.approx(3.0)
    assert std[3] == pytest.approx(np.sqrt(2.0 / 3.0), rel=1e-6)
    assert mean[0] == 1.0 and std[0] == 0.0  # one sample: std 0, not NaN
    # after the gap the window restarts: t=10 alone, then t=10, 11
    assert mean[4] == 10.0 and std[4] == 0.0
    assert mean[5] == pytest.approx(15.0) and std[5] == pytest.approx(5.0)
    assert column(feats, "y_std_3s").tolist() == [0.0] * 6


@pytest.mark.parametrize("drop, needle", [("latency", "latency"), ("timestamp", "timestamp"),
                                          ("device_id", "device_id")])
def test_missing_columns_are_named(drop, needle):
    """A frame without a required column raises TelemetryError naming the column."""
    data = frame([0, 1], x=[1.0, 2.0], latency=[1.0, 2.0]).drop(columns=drop)
    with pytest.raises(TelemetryError, match=needle):
        build_features(data, ["x", "latency"], gap_s=5)


def test_no_rows_is_an_error():
    """An empty frame raises TelemetryError saying it has no rows."""
    with pytest.raises(TelemetryError, match="no rows"):
        build_features(frame([], x=[]), ["x"], gap_s=5)


def test_non_numeric_metric_is_an_error():
    """Text in a metric column raises TelemetryError saying metrics must be numeric."""
    data = frame([0, 1])
    data["x"] = ["1.0", "fast"]
    with pytest.raises(TelemetryError, match="numeric"):
        build_features(data, ["x"], gap_s=5)


def test_unparsable_timestamps_are_an_error():
    """Timestamps that are not timestamps raise TelemetryError naming the column."""
    data = pd.DataFrame({"device_id": ["a", "a"], "timestamp": ["2024-01-01", "yesterday-ish"],
                         "x": [1.0, 2.0]})
    with pytest.raises(TelemetryError, match="timestamp"):
        build_features(data, ["x"], gap_s=5)


def test_missing_timestamps_are_an_error():
    """A missing timestamp cannot be placed in time: TelemetryError, not a row in 1677."""
    data = pd.DataFrame({"device_id": ["a", "a"], "timestamp": [T0, None], "x": [1.0, 2.0]})
    with pytest.raises(TelemetryError, match="timestamp"):
        build_features(data, ["x"], gap_s=5)


def test_numeric_timestamps_are_epoch_seconds():
    """Numbers in the timestamp column are epoch seconds, as everywhere else in EyeNet."""
    data = pd.DataFrame({"device_id": "a", "timestamp": [1_700_000_000, 1_700_000_001, 1_700_000_100],
                         "x": [1.0, 2.0, 3.0]})
    feats = build_features(data, ["x"], gap_s=5)
    assert feats.timestamps_ms.tolist() == [1_700_000_000_000, 1_700_000_001_000, 1_700_000_100_000]
    assert feats.segments.tolist() == [0, 0, 1]


def test_one_metric_and_thirty_eight_metrics():
    """Any metric list works: shapes follow the metric count, rolling adds two per metric."""
    for n in (1, 38):
        metrics = [f"m{i:02d}" for i in range(n)]
        rng = np.random.default_rng(n)
        data = pd.concat([frame(np.arange(40), d, **{m: rng.normal(size=40) for m in metrics})
                          for d in ("a", "b")], ignore_index=True)
        feats = build_features(data, metrics, gap_s=5, rolling_s=5)
        assert feats.values.shape == (80, 3 * n) and feats.values.dtype == np.float32
        assert feats.names[:n] == metrics and len(feats.names) == 3 * n
        scaled = Scaler.fit(feats.values).transform(feats.values)
        targets = window_targets(feats.segments, 8)
        assert windows_at(scaled, targets, 8).shape == (2 * 32, 8, 3 * n)


# -- Scaler ---------------------------------------------------------------------------------

def test_scaler_centres_on_the_median_and_scales_by_the_std():
    """center is the per-column median, scale the per-column (population) std."""
    values = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 60.0], [10.0, 30.0]])
    scaler = Scaler.fit(values)
    np.testing.assert_allclose(scaler.center, [2.5, 25.0])
    np.testing.assert_allclose(scaler.scale, values.std(axis=0))
    np.testing.assert_allclose(scaler.transform(values), (values - [2.5, 25.0]) / values.std(axis=0),
                               rtol=1e-6)


def test_constant_training_column_gets_a_scale_floor():
    """A column that never moved gets 1% of its magnitude as scale (a zero column a tiny
    absolute floor), so a later change is large but finite, and clipped."""
    values = np.column_stack([np.full(50, 1000.0), np.zeros(50), np.arange(50.0)])
    scaler = Scaler.fit(values)
    assert scaler.scale[0] == pytest.approx(10.0)
    assert scaler.scale[1] == ABSOLUTE_SCALE_FLOOR
    z = scaler.transform(np.array([[1010.0, 0.0, 25.0], [1e9, 1e9, -1e9]]))
    assert z[0, 0] == pytest.approx(1.0) and z[0, 1] == 0.0
    assert np.isfinite(z).all()
    assert z[1].tolist() == [CLIP_Z, CLIP_Z, -CLIP_Z]


def test_scaler_missing_values_become_zero():
    """NaN (and all-NaN training columns) transform to 0, the training median."""
    values = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    with pytest.warns(RuntimeWarning):  # numpy warns about the all-NaN column
        scaler = Scaler.fit(values)
    assert scaler.center.tolist() == [2.0, 0.0]
    z = scaler.transform(values)
    assert z[2, 0] == 0.0 and z[:, 1].tolist() == [0.0, 0.0, 0.0]
    assert z.dtype == np.float32


def test_scaler_round_trips_through_a_dict():
    """to_dict gives JSON-friendly lists; from_dict restores the same transform."""
    values = np.random.default_rng(0).normal(5.0, 3.0, (100, 4))
    scaler = Scaler.fit(values)
    data = scaler.to_dict()
    assert isinstance(data["center"], list) and isinstance(data["scale"], list)
    again = Scaler.from_dict(data)
    np.testing.assert_array_equal(again.transform(values), scaler.transform(values))


def test_scaler_needs_rows():
    """Fitting on zero rows raises TelemetryError."""
    with pytest.raises(TelemetryError, match="zero rows"):
        Scaler.fit(np.empty((0, 3)))


# -- windows --------------------------------------------------------------------------------

def brute_force_targets(segments, window, flagged=None) -> list[int]:
    keep = []
    for t in range(window, len(segments)):
        rows = slice(t - window, t + 1)
        if len(set(segments[rows])) == 1 and (flagged is None or not flagged[rows].any()):
            keep.append(t)
    return keep


def test_windows_never_span_segments():
    """A target's previous `window` rows lie in its own segment."""
    segments = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert window_targets(segments, 3).tolist() == [3, 4, 8, 9]
    assert window_targets(segments, 5).tolist() == []
    assert window_targets(segments[:3], 3).tolist() == []


def test_flagged_rows_exclude_every_window_touching_them():
    """A flagged row removes the targets whose window or target includes it."""
    segments = np.zeros(12, np.int64)
    flagged = np.zeros(12, bool)
    flagged[6] = True
    # window 3: targets 3..11, those with 6 in [t-3, t] are 6, 7, 8, 9
    assert window_targets(segments, 3, flagged).tolist() == [3, 4, 5, 10, 11]
    assert window_targets(segments, 3, np.zeros(12, bool)).tolist() == list(range(3, 12))


def test_window_targets_match_a_brute_force_definition():
    """Random segments and flags: same targets as checking every window by hand."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        segments = np.cumsum(rng.random(n) < 0.1)
        flagged = rng.random(n) < 0.05
        window = int(rng.integers(1, 8))
        assert window_targets(segments, window, flagged).tolist() == \
            brute_force_targets(segments, window, flagged)
        assert window_targets(segments, window).tolist() == brute_force_targets(segments, window)


def test_windows_at_returns_the_rows_before_each_target():
    """windows_at(values, targets, w)[i] == values[t_i - w : t_i], shape (targets, w, F)."""
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    out = windows_at(values, np.array([3, 9, 4]), 3)
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[0], values[0:3])
    np.testing.assert_array_equal(out[1], values[6:9])
    np.testing.assert_array_equal(out[2], values[1:4])
    assert out.flags["C_CONTIGUOUS"]
    assert windows_at(values, np.array([], np.int64), 3).shape == (0, 3, 3)


# -- reference and names --------------------------------------------------------------------

def test_feature_reference_statistics_and_bins():
    """Per feature: mean/std/min/max/p75 of the finite values and PSI bins summing to 1."""
    rng = np.random.default_rng(1)
    values = np.column_stack([rng.exponential(2.0, 1000), np.full(1000, 3.0), np.full(1000, np.nan)])
    values[::10, 0] = np.nan
    ref = feature_reference(values, ["a", "const", "empty"])
    assert set(ref) == {"a", "const"}, "an all-missing feature has no reference"
    col = values[:, 0][np.isfinite(values[:, 0])]
    a = ref["a"]
    assert a["mean"] == pytest.approx(col.mean()) and a["std"] == pytest.approx(col.std())
    assert a["min"] == col.min() and a["max"] == col.max()
    assert a["p75"] == pytest.approx(np.quantile(col, 0.75))
    assert len(a["bin_edges"]) == PSI_BINS - 1
    assert len(a["bin_fractions"]) == PSI_BINS
    assert sum(a["bin_fractions"]) == pytest.approx(1.0)
    assert a["bin_fractions"] == pytest.approx([0.1] * PSI_BINS, abs=0.01)
    assert sum(ref["const"]["bin_fractions"]) == pytest.approx(1.0)
    assert ref["const"]["std"] == 0.0


def test_metric_of_maps_features_back_to_metrics():
    """Plain metrics map to themselves, ratios to their numerator, rolling features to the
    longest metric they start with; unknown names to themselves."""
    metrics = ["cpu", "cpu_util", "bytes_in", "packets_in"]
    assert metric_of("cpu", metrics) == "cpu"
    assert metric_of("bytes_per_packet_in", metrics) == "bytes_in"
    assert metric_of("cpu_util_mean_30s", metrics) == "cpu_util"
    assert metric_of("cpu_std_30s", metrics) == "cpu"
    assert metric_of("other", metrics) == "other"
    for name in feature_names(metrics, rolling_s=2.5):
        assert metric_of(name, metrics) in metrics
