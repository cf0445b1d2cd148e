"""``eyenet ingest`` without Ray: incidents, source options, checks before Ray starts, the summary."""

from __future__ import annotations

import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError
from eyenet.sources.factory import build_source
from eyenet.sources.incidents import Incident
from jobs.cli import build_parser, main
from jobs.ingest import parse_incident, progress_line, run_ingest, source_options, summarise
from jobs.options import IngestOptions

NOW_S = 1_740_787_200.0  # 2025-03-01T00:00Z
NOW_MS = int(NOW_S * 1000)


def ingest_args(*argv: str):
    return IngestOptions.from_namespace(build_parser().parse_args(["ingest", *argv]))


# -- jobs/ingest: incidents and source options -------------------------------------------------

@pytest.mark.parametrize(("text", "device", "kind", "start_s", "duration_s"), [
    ("ddos_burst:dev-0003:120:300", "dev-0003", "ddos_burst", 120, 300),
    ("latency_spike:edge.router-1:-60:30", "edge.router-1", "latency_spike", -60, 30),
    ("sensor_stuck:dev-0000:1.5:2.25", "dev-0000", "sensor_stuck", 1.5, 2.25),
])
def test_parse_incident_is_relative_to_the_origin(text, device, kind, start_s, duration_s):
    inc = parse_incident(text, NOW_MS)
    assert isinstance(inc, Incident)
    assert (inc.device_id, inc.kind) == (device, kind)
    assert inc.start_ms == NOW_MS + int(start_s * 1000)
    assert inc.end_ms == inc.start_ms + int(duration_s * 1000)
    assert inc.metrics == [] and not inc.magnitude  # the kind's defaults


@pytest.mark.parametrize("text", ["ddos_burst:dev-0003:120", "ddos_burst:dev-0003:soon:300",
                                  "DDoS:dev-0003:120:300", "ddos_burst::120:300",
                                  "ddos_burst:dev-0003:120:-5", ""])
def test_parse_incident_names_bad_text(text):
    with pytest.raises(ConfigError) as info:
        parse_incident(text, NOW_MS)
    assert repr(text) in str(info.value) and "KIND:DEVICE:START_S:DURATION_S" in str(info.value)
    assert info.value.field == "incident" and info.value.value == text


def test_simulated_options_carry_the_arguments_and_build_a_source():
    args = ingest_args("--source", "simulated", "--devices", "3", "--seed", "4", "--speed", "2",
                       "--garbage-rate", "0.01", "--incident-rate", "1.5",
                       "--incident", "ddos_burst:dev-0001:120:300",
                       "--incident", "latency_spike:dev-0002:-60:30")
    options, start_ms = source_options(args, NOW_S)
    assert start_ms is None  # no history: the collectors start at the source's now
    assert options == {"devices": 3, "seed": 4, "speed": 2.0, "origin_wall_s": NOW_S,
                       "garbage_rate": 0.01, "incident_rate_per_device_day": 1.5,
                       "incidents": [Incident("dev-0001", "ddos_burst", NOW_MS + 120_000, NOW_MS + 420_000,
                                              [], 0.0),
                                     Incident("dev-0002", "latency_spike", NOW_MS - 60_000, NOW_MS - 30_000,
                                              [], 0.0)]}
    # the option names are the simulated source's own: it accepts them as they are
    src = build_source("simulated", EyeNetConfig(), **options)
    assert src.devices() == ["dev-0000", "dev-0001", "dev-0002"]
    injected = [(i.device_id, i.kind, i.start_ms) for i in src.incidents_between(NOW_MS - 3600_000,
                                                                               NOW_MS + 3600_000)
                if i.device_id in ("dev-0001", "dev-0002") and i.kind in ("ddos_burst", "latency_spike")]
    assert ("dev-0001", "ddos_burst", NOW_MS + 120_000) in injected
    assert ("dev-0002", "latency_spike", NOW_MS - 60_000) in injected


def test_history_sets_the_start_cursor():
    options, start_ms = source_options(ingest_args("--source", "simulated", "--history-s", "600"), NOW_S)
    assert start_ms == NOW_MS - 600_000
    assert "incidents" not in options and options["devices"] == 10  # parser defaults
    _, start_ms = source_options(ingest_args("--source", "simulated", "--history-s", "0.5"), NOW_S)
    assert start_ms == NOW_MS - 500


def test_replay_needs_files_and_starts_at_the_files(tmp_path):
    with pytest.raises(ConfigError, match=r"--source replay needs --files") as info:
        source_options(ingest_args("--source", "replay"), NOW_S)
    assert info.value.field == "files"
    csv = tmp_path / "fleet.csv"
    pd.DataFrame({"device_id": ["a", "a"], "timestamp": ["2025-03-01T00:00:10Z", "2025-03-01T00:00:20Z"],
                  "latency": [1.0, 2.0]}).to_csv(csv, index=False)
    args = ingest_args("--source", "replay", "--files", str(csv), "--speed", "4", "--history-s", "600")
    options, start_ms = source_options(args, NOW_S)
    assert options == {"paths": [str(csv)], "speed": 4.0, "origin_wall_s": NOW_S}
    assert start_ms is None  # replay reads its files from their first sample
    src = build_source("replay", EyeNetConfig(metrics=["latency"], counter_metrics=[]), **options)
    assert src.devices() == ["a"]


class RayWouldStart(AssertionError):
    pass


@pytest.fixture
def no_ray(monkeypatch):
    """Make starting Ray (or the pipeline) fail loudly instead of happening."""
    import actors.pipeline
    import jobs._ray

    def refuse(*_args, **_kwargs):
        raise RayWouldStart("run_ingest got as far as starting Ray")

    monkeypatch.setattr(jobs._ray, "ensure_ray", refuse)
    monkeypatch.setattr(actors.pipeline, "start_pipeline", refuse)


@pytest.mark.parametrize("seconds", ["0", "-5"])
def test_run_ingest_refuses_non_positive_seconds_before_ray(no_ray, seconds):
    with pytest.raises(ConfigError, match=r"--seconds must be > 0") as info:
        run_ingest(EyeNetConfig(), ingest_args("--source", "simulated", f"--seconds={seconds}"))
    assert info.value.field == "seconds" and info.value.value == float(seconds)
    # (the no_ray fixture fails the test if ensure_ray or start_pipeline is reached)


def test_run_ingest_refuses_replay_without_files_before_ray(no_ray):
    with pytest.raises(ConfigError, match=r"--files"):
        run_ingest(EyeNetConfig(), ingest_args("--source", "replay", "--seconds", "5"))


def test_ingest_command_exits_2_naming_the_seconds(no_ray, tmp_path, capsys):
    code = main(["ingest", "--source", "simulated", "--seconds", "0", "--store", f"sqlite:///{tmp_path}/i.db"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "eyenet: error: --seconds must be > 0, got 0.0"


def collector_stats(devices, totals, rejected, repaired, failing=None, silent=()):
    return {"name": "c", "devices": devices, "totals": totals, "rejected": rejected, "repaired": repaired,
            "failing_devices": failing or {}, "silent_devices": list(silent), "lag_s": 0.0}


def test_summarise_adds_up_collectors_and_scorers():
    final = {"collectors": [
        collector_stats(3, {"fetched": 100, "accepted": 95, "rejected": 5, "stored": 95},
                        {"duplicate": 3, "future_timestamp": 2}, {"metric_missing:latency": 4},
                        {"dev-0002": {"failures": 2, "error": "timeout"}}, ["dev-0002"]),
        collector_stats(2, {"fetched": 50, "accepted": 49, "rejected": 1, "stored": 47,
                            "store_duplicates": 2},
                        {"duplicate": 1}, {"metric_missing:latency": 1, "counter_reset:bytes_in": 2},
                        silent=["dev-0004"])],
        "feature_actors": [{"totals": {"samples": 90, "windows": 80, "anomalies": 3}},
                           {"totals": {"samples": 52}}]}
    assert summarise(final, 12.345) == {
        "seconds": 12.3, "devices": 5,
        "totals": {"fetched": 150, "accepted": 144, "rejected": 6, "stored": 142, "store_duplicates": 2},
        "reasons": {"duplicate": 4, "future_timestamp": 2, "repaired:metric_missing:latency": 5,
                    "repaired:counter_reset:bytes_in": 2},
        "scored": 142, "anomalies": 3,
        "failing_devices": {"dev-0002": {"failures": 2, "error": "timeout"}},
        "silent_devices": ["dev-0002", "dev-0004"]}


def test_summarise_without_scoring():
    final = {"collectors": [collector_stats(1, {"fetched": 7, "accepted": 7, "stored": 7}, {}, {})]}
    summary = summarise(final, 0.04)
    assert summary["seconds"] == 0.0 and summary["devices"] == 1
    assert summary["scored"] == 0 and summary["anomalies"] == 0 and summary["reasons"] == {}


def test_progress_line_sums_rejections_over_collectors():
    stats = {"stored": 12_345, "scored": 6_789,
             "collectors": [collector_stats(1, {"rejected": 3}, {}, {}), collector_stats(1, {}, {}, {})]}
    assert progress_line(stats, 2.5, 30.2) == \
        "[    30 s] stored 12,345 samples, scored 6,789, rejected 3, lag 2.5 s"
