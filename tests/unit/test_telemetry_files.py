"""One reader, one timestamp rule, one millisecond rule, one validation path for files."""

from __future__ import annotations

import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.telemetry.files import read_metric_csv
from eyenet.telemetry.schema import ms_of, to_ms
from jobs.cli import main


@pytest.mark.parametrize("ns", [1_700_000_000_000_499_999, 1_700_000_000_000_500_000,
                                1_700_000_000_000_999_999, 1_700_000_000_001_000_000])
def test_one_timestamp_and_a_column_convert_to_the_same_milliseconds(ns):
    ts = pd.Timestamp(ns, unit="ns", tz="UTC")
    assert ms_of(ts) == int(to_ms(pd.Series([ts]))[0])
    assert ms_of(ts.isoformat()) == ms_of(ts)


def test_a_metric_file_reads_numbers_as_epoch_seconds_like_the_validator(tmp_path):
    # pd.to_datetime read these as nanoseconds after 1970 (the first reader's rule)
    path = tmp_path / "x.csv"
    pd.DataFrame({"timestamp": [1_700_000_000, 1_700_000_060, 1_700_000_120],
                  "a": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    frame, metrics = read_metric_csv(path)
    assert metrics == ["a"]
    assert frame["timestamp"].iloc[0] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")


def test_train_csv_goes_through_the_ingest_rules(tmp_path, monkeypatch, capsys):
    """A value ingest would repair (negative, absurd) must not reach training raw."""
    import jobs.train

    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(frame, config, **kw):
        seen["frame"] = frame
        raise Stop

    monkeypatch.setattr(jobs.train, "fit_detector", fake_fit)
    rows = 50
    values = [float(i % 7) for i in range(rows)]
    values[10] = -5.0  # no metric is signed: ingest stores it as missing
    path = tmp_path / "train.csv"
    pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=rows, freq="60s", tz="UTC"),
                  "a": values, "b": [1.0 + (i % 3) for i in range(rows)]}).to_csv(path, index=False)
    with pytest.raises(Stop):
        main(["train", "--train-csv", str(path), "--store", f"sqlite:///{tmp_path}/s.db",
              "--artifact-root", str(tmp_path / "art")])
    frame = seen["frame"]
    assert len(frame) == rows and pd.isna(frame["a"].iloc[10])
    assert "repaired metric_negative:a: 1" in capsys.readouterr().out


def test_validate_history_refuses_a_file_with_nothing_acceptable(tmp_path):
    from eyenet.errors import TelemetryError
    from eyenet.telemetry.validation import validate_history

    config = EyeNetConfig(metrics=["a"], counter_metrics=[])
    frame = pd.DataFrame({"device_id": ["d", "d"],
                          "timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"],
                          "a": [-1.0, -2.0]})
    with pytest.raises(TelemetryError, match=r"x\.csv: no sample passes validation \(no_valid_metrics 2\)"):
        validate_history(frame, config, "x.csv")
