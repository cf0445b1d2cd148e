"""The scoring protocol's arithmetic, the baselines and the dataset loaders."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eyenet.config import DetectorConfig
from eyenet.datasets import load_nab, sample_interval_s, smd_segments
from eyenet.evaluation import (
    Baseline,
    attribution_hit_rate,
    label_segments,
    mean_table,
    point_adjust,
    score_series,
)
from eyenet.features import build_features


def test_label_segments_are_half_open_runs_of_ones():
    assert label_segments(np.array([0, 1, 1, 0, 1])) == [(1, 3), (4, 5)]
    assert label_segments(np.zeros(3)) == []


def test_point_adjust_fills_a_segment_with_any_hit():
    labels = np.array([0, 1, 1, 1, 0, 1, 1])
    pred = np.array([1, 0, 1, 0, 0, 0, 0], bool)
    assert point_adjust(labels, pred).astype(int).tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_score_series_point_wise_figures_by_hand():
    labels = np.array([0, 0, 1, 1, 0, 1])
    decision = np.array([0, 1, 1, 0, 0, 0], bool)
    raw = np.array([0.1, 0.6, 0.9, 0.5, 0.2, 0.3])
    out = score_series(labels, raw, decision)
    assert out["precision"] == pytest.approx(0.5) and out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(0.4)
    assert out["event_recall"] == pytest.approx(0.5)  # first segment hit, second missed
    assert out["point_adjusted_f1"] == pytest.approx(2 / 3)  # P = R = 2/3 after adjustment
    assert 0 < out["auprc"] <= 1 and out["oracle_best_f1"] >= out["f1"]


def test_attribution_hit_rate_counts_flagged_rows_in_segments_only():
    decision = np.array([1, 1, 1, 0, 1], bool)
    top = np.array(["a", "b", "a", "a", "c"], dtype=object)
    assert attribution_hit_rate(decision, top, [(1, 3, {"a"})]) == pytest.approx(0.5)
    assert attribution_hit_rate(np.zeros(5, bool), top, [(1, 3, {"a"})]) is None


@pytest.mark.parametrize("kind", ["pca", "isolation_forest"])
def test_baselines_rank_a_spike_above_normal_rows(kind):
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    values = np.c_[np.sin(t / 20), np.cos(t / 20), np.sin(t / 20) + np.cos(t / 20)]
    values = values + 0.05 * rng.standard_normal(values.shape)
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    frame.insert(0, "timestamp", pd.date_range("2026-01-01", periods=len(t), freq="1s", tz="UTC"))
    frame.insert(0, "device_id", "d")
    train, test = frame.iloc[:1000], frame.iloc[1000:].copy()
    test.iloc[50:55, test.columns.get_loc("c")] += 5.0
    cfg = DetectorConfig()
    base = Baseline(kind, cfg).fit(build_features(train, ["a", "b", "c"], gap_s=3))
    raw, decision = base.score(build_features(test, ["a", "b", "c"], gap_s=3))
    assert raw[50:55].min() > np.quantile(raw[100:], 0.99)
    assert decision[50:55].all()


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="unknown baseline"):
        Baseline("lof", DetectorConfig())


def test_mean_table_averages_numeric_fields():
    assert mean_table([{"f1": 0.2, "s": "x"}, {"f1": 0.4}]) == {"f1": pytest.approx(0.3)}


def test_nab_loader_labels_the_combined_windows_and_splits_in_time(tmp_path):
    series = tmp_path / "nab" / "realAWSCloudwatch"
    series.mkdir(parents=True)
    stamps = pd.date_range("2014-02-14 00:00", periods=20, freq="5min")
    pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "value": np.arange(20.0)}).to_csv(
        series / "x.csv", index=False)
    (tmp_path / "nab" / "combined_windows.json").write_text(json.dumps(
        {"realAWSCloudwatch/x.csv": [["2014-02-14 01:00:00.000000", "2014-02-14 01:10:00.000000"]]}))
    train, test, metrics = load_nab(series / "x.csv", train_fraction=0.5)
    assert metrics == ["value"] and len(train) == len(test) == 10
    assert np.flatnonzero(pd.concat([train, test])["label"].to_numpy()).tolist() == [12, 13, 14]
    assert sample_interval_s(train) == 300.0


def test_smd_segments_are_half_open_with_blamed_metrics(tmp_path):
    (tmp_path / "segments.csv").write_text("start,end,metrics\n3,5,m01 m02\n")
    assert smd_segments(tmp_path) == [(3, 6, {"m01", "m02"})]
    assert smd_segments(tmp_path / "absent") == []


def test_repeated_timestamps_fail_detect_input_but_datasets_keep_the_first(tmp_path):
    from eyenet.datasets import read_metric_csv
    from eyenet.errors import TelemetryError

    path = tmp_path / "x.csv"
    pd.DataFrame({"timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:01:00Z"],
                  "v": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    with pytest.raises(TelemetryError, match="row 4 repeats timestamp"):
        read_metric_csv(path)
    frame, _ = read_metric_csv(path, keep_first_duplicate=True)
    assert frame["v"].tolist() == [1.0, 2.0]


def test_evaluation_reports_an_unreadable_series_and_goes_on(tmp_path):
    from eyenet.config import EyeNetConfig
    from jobs.evaluate import run_evaluation

    machine = tmp_path / "smd" / "machine-9-9"
    machine.mkdir(parents=True)
    (machine / "train.csv.gz").write_bytes(b"not gzip")
    result = run_evaluation(str(tmp_path), EyeNetConfig(), datasets=("smd",))
    assert result["series"] == []
    assert result["errors"][0]["series"] == "machine-9-9" and "cannot be read" in result["errors"][0]["error"]
