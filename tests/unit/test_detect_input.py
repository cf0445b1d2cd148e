"""``eyenet detect`` writes one row per test row in the test file's order, and refuses bad
CSVs before Ray starts, naming the file/column/row, writing nothing. (The output contract
is the same for every kind; kmeans fits in-process, so these tests start no Ray.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.cli import main


def write(path, rows=200, **overrides):
    frame = pd.DataFrame({
        "timestamp": pd.date_range("2026-01-01", periods=rows, freq="60s", tz="UTC").strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "a": np.sin(np.arange(rows) / 5.0), "b": np.cos(np.arange(rows) / 7.0)})
    for col, value in overrides.items():
        frame[col] = value
    frame.to_csv(path, index=False)
    return path


def run(tmp_path, capsys, train, test=None):
    out = tmp_path / "out.csv"
    code = main(["detect", "--train", str(train), "--test", str(test or write(tmp_path / "test.csv")),
                 "--out", str(out), "--store", f"sqlite:///{tmp_path}/s.db"])
    err = capsys.readouterr().err
    assert code != 0
    assert not out.exists(), "a failed detect must not leave an output file"
    assert not list(tmp_path.glob(".eyenet-detect-*")), "no temporary file may be left behind"
    return err


def test_detect_writes_one_row_per_test_row_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("EYENET_DETECTOR__KIND", "kmeans")
    frame = pd.read_csv(write(tmp_path / "all.csv", rows=300))
    train, test = frame.iloc[:240], frame.iloc[240:]
    test = test.assign(label=0).sample(frac=1.0, random_state=0)  # shuffled, with a label to ignore
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    code = main(["detect", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "out.csv"), "--store", f"sqlite:///{tmp_path}/s.db"])
    assert code == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["timestamp", "score", "is_anomaly", "top_feature", "regime_change"]
    assert len(out) == len(test)
    assert (pd.to_datetime(out["timestamp"]) == pd.to_datetime(test["timestamp"]).to_numpy()).all()
    assert out["score"].between(0, 1).all() and set(out["is_anomaly"]) <= {0, 1}
    assert set(out["top_feature"].dropna()) <= {"a", "b"}


def test_missing_file(tmp_path, capsys):
    assert "no such file" in run(tmp_path, capsys, tmp_path / "nope.csv")


def test_header_without_rows(tmp_path, capsys):
    path = tmp_path / "train.csv"
    path.write_text("timestamp,a,b\n")
    err = run(tmp_path, capsys, path)
    assert "train.csv" in err and "no rows" in err


def test_missing_timestamp_column(tmp_path, capsys):
    path = tmp_path / "train.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(path, index=False)
    assert "no 'timestamp' column" in run(tmp_path, capsys, path)


def test_non_numeric_value_names_column_and_row(tmp_path, capsys):
    values = np.arange(200.0).astype(object)
    values[7] = "oops"
    err = run(tmp_path, capsys, write(tmp_path / "train.csv", b=values))
    assert "column 'b' line 9" in err and "'oops'" in err


def test_test_file_missing_a_training_metric(tmp_path, capsys):
    test = tmp_path / "test.csv"
    write(test).read_text()
    pd.read_csv(test).drop(columns=["b"]).to_csv(test, index=False)
    err = run(tmp_path, capsys, write(tmp_path / "train.csv"), test)
    assert "test.csv" in err and "missing metric column(s) ['b']" in err


def test_only_constant_columns(tmp_path, capsys):
    err = run(tmp_path, capsys, write(tmp_path / "train.csv", a=1.0, b=2.0))
    assert "every metric column is constant" in err


def test_fewer_rows_than_one_window(tmp_path, capsys):
    err = run(tmp_path, capsys, write(tmp_path / "train.csv", rows=20))
    assert "train.csv" in err and "not enough history" in err


def test_bad_timestamp_names_the_row(tmp_path, capsys):
    stamps = pd.date_range("2026-01-01", periods=200, freq="60s", tz="UTC").astype(str).tolist()
    stamps[3] = "yesterday-ish"
    err = run(tmp_path, capsys, write(tmp_path / "train.csv", timestamp=stamps))
    assert "line 5" in err and "not a timestamp" in err


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--gpus", "-1")])
def test_bad_worker_counts(tmp_path, capsys, flag, value):
    code = main(["detect", "--train", "x.csv", "--test", "y.csv", "--out", str(tmp_path / "o.csv"),
                 flag, value])
    assert code == 2 and flag.lstrip("-") in capsys.readouterr().err


def test_stored_anomaly_events_flag_their_samples_for_exclusion():
    from eyenet.store.base import Event
    from jobs.train import flag_incidents

    frame = pd.DataFrame({"device_id": ["a", "a", "a", "b"],
                          "timestamp": pd.to_datetime([0, 1, 2, 1], unit="s", utc=True),
                          "x": [1.0, 2.0, 3.0, 4.0]})
    events = [Event(kind="anomaly", message="m", device_id="a", ts=frame["timestamp"].iloc[1]),
              Event(kind="anomaly", message="fleet-wide, no device", ts=frame["timestamp"].iloc[0])]
    flagged = flag_incidents(frame, events, tolerance_s=0.5)
    assert flagged["label"].tolist() == [0, 1, 0, 0]
    assert "label" not in frame.columns, "the input frame is not modified"


def test_a_live_anomaly_episode_flags_every_sample_it_covers():
    from eyenet.store.base import Event
    from jobs.train import flag_incidents

    frame = pd.DataFrame({"device_id": ["a"] * 8,
                          "timestamp": pd.to_datetime(range(0, 80, 10), unit="s", utc=True), "x": 1.0})
    episode = Event(kind="anomaly", message="m", device_id="a", ts=frame["timestamp"].iloc[2],
                    payload={"start_ms": 20_000, "end_ms": 50_000, "points": 4})
    assert flag_incidents(frame, [episode], tolerance_s=0.5)["label"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
