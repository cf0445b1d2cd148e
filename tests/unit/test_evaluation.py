"""The scoring protocol's arithmetic, the baselines and the dataset loaders."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from eyenet.detection.datasets import load_nab, sample_interval_s, smd_segments
from eyenet.detection.evaluation import (
    attribution_hit_rate,
    label_segments,
    mean_table,
    point_adjust,
    score_series,
    vus_pr,
)


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


def test_score_series_reports_vus_pr_only_with_labelled_anomalies():
    labels = np.array([0, 0, 1, 1, 0, 1])
    raw = np.array([0.1, 0.6, 0.9, 0.5, 0.2, 0.3])
    out = score_series(labels, raw, raw > 0.55)
    assert out["vus_pr"] == pytest.approx(vus_pr(labels, raw)) and 0 < out["vus_pr"] <= 1
    assert "vus_pr" not in score_series(np.zeros(6), raw, raw > 0.55)


def test_vus_pr_by_hand():
    # Segments [2, 3] and [7]; P = 3. Three thresholds: the scores at descending ranks
    # linspace(0, 9, 3).astype(int) = 0, 4, 9, i.e. 0.9, 0.5, 0.0, flagging
    #   k0 {2}, k1 {0, 2, 4, 5, 7}, k2 everything.
    labels = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    score = np.array([0.6, 0.1, 0.9, 0.2, 0.8, 0.5, 0.3, 0.7, 0.0, 0.05])
    # Windows 0 and 1: no buffer (window // 2 = 0), ranges = the two segments.
    #   k0: TP 1, recall 1/3, existence 1/2 -> TPR 1/6, precision 1
    #   k1: TP 2 (rows 2, 7), recall 2/3, existence 1 -> TPR 2/3, precision 2/5
    #   k2: TP 3 -> TPR 1, precision 3/10
    #   area = 1/6 * 1 + (2/3 - 1/6) * 2/5 + (1 - 2/3) * 3/10 = 7/15
    no_buffer = 7 / 15
    # Window 2: one buffer row each side with label r = sqrt(1 - 1/2); soft labels
    # [0, r, 1, 1, r, 0, r, 1, r, 0]; buffered ranges [1, 4] and [6, 8] (gap 4 > 2).
    #   k0: as above, TPR 1/6, precision 1
    #   k1: TP = 1 + r + 1 (rows 2, 4, 7) = 2 + r; N_labels = P + r (row 4) = 3 + r;
    #       recall R = (2 + r) / ((3 + 3 + r) / 2) = (2 + r) / (3 + r / 2) ~ 0.8072,
    #       existence 1 -> TPR R; precision (2 + r) / 5
    #   k2: TP = 3 + 4r; recall min((3 + 4r) / (3 + 2r), 1) = 1 -> TPR 1; precision (3 + 4r) / 10
    r = np.sqrt(0.5)
    big_r = (2 + r) / (3 + r / 2)
    buffer_2 = 1 / 6 + (big_r - 1 / 6) * (2 + r) / 5 + (1 - big_r) * (3 + 4 * r) / 10
    # = 0.16667 + 0.64056 * 0.54142 + 0.19277 * 0.58284 ~ 0.6258
    assert buffer_2 == pytest.approx(0.6258, abs=1e-4)
    expected = (2 * no_buffer + buffer_2) / 3  # ~ 0.5197
    assert vus_pr(labels, score, max_buffer=2, n_thresholds=3) == pytest.approx(expected)
    assert vus_pr(labels, score, max_buffer=0, n_thresholds=3) == pytest.approx(no_buffer)


def _tsb_ad_vus_pr(labels, score, window_size, thre):
    """TheDatumOrg/TSB-AD basic_metricor.RangeAUC_volume_opt, loop for loop, VUS-PR only."""
    n, P = len(labels), np.sum(labels)
    seq = [(s, e - 1) for s, e in label_segments(labels)]

    def new_sequence(window):
        a, out = max(seq[0][0] - window // 2, 0), []
        for (_, e), (s_next, _) in itertools.pairwise(seq):
            if e + window // 2 < s_next - window // 2:
                out.append((a, e + window // 2))
                a = s_next - window // 2
        return [*out, (a, min(seq[-1][1] + window // 2, n - 1))]

    big_l = new_sequence(window_size)
    score_sorted = -np.sort(-score)
    ranks = np.linspace(0, n - 1, thre).astype(int)
    aps = []
    for window in range(window_size + 1):
        ext = labels.astype(float)
        for s, e in seq:
            x1 = np.arange(e + 1, min(e + window // 2 + 1, n))
            ext[x1] += np.sqrt(1 - (x1 - e) / window)
            x2 = np.arange(max(s - window // 2, 0), s)
            ext[x2] += np.sqrt(1 - (s - x2) / window)
        ext = np.minimum(1, ext)
        small_l = new_sequence(window)
        tpr, prec = [0.0], [1.0]
        for i in ranks:
            pred = score >= score_sorted[i]
            lab, existence = ext.copy(), 0
            for a, b in small_l:
                lab[a:b + 1] = ext[a:b + 1] * pred[a:b + 1]
                existence += bool(pred[a:b + 1].any())
            for s, e in seq:
                lab[s:e + 1] = 1
            tp = sum(np.dot(lab[a:b + 1], pred[a:b + 1]) for a, b in big_l)
            n_labels = sum(np.sum(lab[a:b + 1]) for a, b in big_l)
            tpr.append(min(tp / ((P + n_labels) / 2), 1) * existence / len(small_l))
            prec.append(tp / np.sum(pred))
        aps.append(np.dot(np.diff(tpr), prec[1:]))
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vus_pr_matches_a_transcription_of_tsb_ad(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros(300, int)
    for start in rng.choice(290, size=4, replace=False):  # may touch, overlap or sit at an edge
        labels[start:start + rng.integers(1, 10)] = 1
    labels[:2] = seed == 1
    score = rng.random(300) + 0.8 * labels + 0.4 * np.roll(labels, 3)  # some of it late
    score[rng.random(300) < 0.1] = 0.5  # some ties
    assert vus_pr(labels, score, max_buffer=12, n_thresholds=40) == pytest.approx(
        _tsb_ad_vus_pr(labels, score, 12, 40), rel=1e-9)


def test_vus_pr_is_one_for_a_perfect_score_and_low_for_noise():
    rng = np.random.default_rng(0)
    labels = np.zeros(30_000, int)
    for start in rng.choice(29_900, size=30, replace=False):
        labels[start:start + 50] = 1
    assert vus_pr(labels, labels.astype(float)) == pytest.approx(1.0)
    noise = vus_pr(labels, rng.random(30_000))
    share = labels.mean()  # ~0.05; the buffers lift noise's precision a little above it
    assert share < noise < 3 * share
    assert vus_pr(labels, labels + 0.5 * rng.random(30_000)) > 0.9


def test_vus_pr_refuses_series_without_anomalies():
    with pytest.raises(ValueError, match="at least one labelled anomaly"):
        vus_pr(np.zeros(5), np.arange(5.0))


def test_attribution_hit_rate_counts_flagged_rows_in_segments_only():
    decision = np.array([1, 1, 1, 0, 1], bool)
    top = np.array(["a", "b", "a", "a", "c"], dtype=object)
    assert attribution_hit_rate(decision, top, [(1, 3, {"a"})]) == pytest.approx(0.5)
    assert attribution_hit_rate(np.zeros(5, bool), top, [(1, 3, {"a"})]) is None


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
    from eyenet.detection.datasets import read_metric_csv
    from eyenet.errors import TelemetryError

    path = tmp_path / "x.csv"
    pd.DataFrame({"timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:01:00Z"],
                  "v": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    with pytest.raises(TelemetryError, match="line 4 repeats timestamp"):
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
