"""``eyenet report`` without Ray: time specs, reports from the saved snapshots, reads that write nothing."""

from __future__ import annotations

import json
import os
import time

import pytest

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError
from eyenet.monitoring.monitor import Monitor, ScoreSummary
from eyenet.store import open_store
from eyenet.telemetry.timespec import parse_since
from jobs.cli import main
from tests.helpers import Clock

NOW_S = 1_740_787_200.0  # 2025-03-01T00:00Z


# -- jobs/report --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172_800),
                                               ("1w", 604_800), ("1.5h", 5400), (" 2d ", 172_800)])
def test_parse_since_durations_count_back_from_now(text, seconds):
    assert parse_since(text, NOW_S) == pytest.approx(NOW_S - seconds)


@pytest.mark.parametrize("text", ["2025-03-01T00:00:00Z", "2025-03-01T01:00:00+01:00", "2025-03-01"])
def test_parse_since_takes_iso_times(text):
    assert parse_since(text, 0.0) == NOW_S


@pytest.mark.parametrize("text", ["yesterday", "10x", "-1h", "1 h", "", "h"])
def test_parse_since_names_garbage(text):
    with pytest.raises(ConfigError) as info:
        parse_since(text, NOW_S)
    assert repr(text) in str(info.value) and "30s, 15m, 1h, 2d, 1w" in str(info.value)
    assert info.value.field == "since"


def summary(at_s: float, windows: int, devices: dict[str, int], anomalous: dict[str, int],
            latency_ms: float) -> ScoreSummary:
    anomalies = [(d, int(at_s * 1000) - i, 0.9, ["latency", "bytes_in"])
                 for d, n in anomalous.items() for i in range(n)]
    return ScoreSummary(sent_at_s=at_s, latency_ms=latency_ms, n_windows=windows, device_counts=devices,
                        anomalies=anomalies)


def test_report_command_without_ray_reads_the_saved_snapshots(tmp_path, monkeypatch, capsys):
    for key in [k for k in os.environ if k == "RAY_ADDRESS" or k.startswith("EYENET_")]:
        monkeypatch.delenv(key)
    uri = f"sqlite:///{tmp_path}/e.db"
    store = open_store(uri)
    config = EyeNetConfig(store_uri=uri)
    now = time.time()
    clock = Clock(now - 2 * 3600)  # an older period first: outside --since 1h
    monitor = Monitor(config, store, None, sinks=[], now_s=clock)
    monitor.record(summary(clock.now, 1000, {"dev-z": 1000}, {"dev-z": 4}, 5.0))
    assert [e.device_id for e in monitor.check()] == ["dev-z"]
    clock.now += 60
    monitor.snapshot()

    clock.now = now - 1800  # two snapshots inside the last hour
    monitor.record(summary(clock.now, 100, {"dev-a": 60, "dev-b": 40}, {"dev-a": 3}, 10.0))
    opened = [e for e in monitor.check() if e.status == "open"]
    assert [(e.kind, e.device_id) for e in opened] == [("device_anomaly", "dev-a")]
    clock.now += 30
    first = monitor.snapshot()
    monitor.record(summary(clock.now, 50, {"dev-a": 25, "dev-b": 25}, {"dev-a": 2, "dev-b": 1}, 30.0))
    clock.now += 30
    second = monitor.snapshot()
    assert (first["windows_scored"], second["windows_scored"]) == (100, 50)
    store.close()

    code = main(["report", "--since", "1h", "--json", "--store", uri, "--artifact-root", str(tmp_path / "a")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "report" and report["snapshots"] == 2
    assert report["windows_scored"] == 150
    assert report["anomalies"] == 6
    assert report["anomalies_by_device"] == [{"device_id": "dev-a", "anomalies": 5},
                                             {"device_id": "dev-b", "anomalies": 1}]
    assert report["alerts"] == {"count": 1, "by_kind": {"latency": 0, "drift": 0, "device_anomaly": 1}}
    assert report["latency"]["count"] == 2 and report["latency"]["avg_ms"] == pytest.approx(20.0)
    assert report["since_s"] == pytest.approx(report["until_s"] - 3600)
    assert open_store(uri).list_reports(kind="report") == []  # a report is read, not saved
    assert main(["report", "--since", "1h", "--json", "--save", "--store", uri]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert [r["report_id"] for r in open_store(uri).list_reports(kind="report")] == [saved["report_id"]]


def test_report_until_must_follow_since(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = main(["report", "--since", "1h", "--until", "2h", "--store", f"sqlite:///{tmp_path}/e.db"])
    assert code == 2
    assert "--until (2h) must be later than --since (1h)" in capsys.readouterr().err
