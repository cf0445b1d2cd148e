"""The Ray-free parts of the streaming commands: ``eyenet ingest`` option handling and its
summary, ``eyenet report`` from stored snapshots, routing and splitting over the actor
pools, and a collector polling a simulated fleet that sends bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from actors.collector import route
from actors.features import split_by_device
from eyenet.config import DEFAULT_COUNTER_METRICS, EyeNetConfig
from eyenet.errors import ConfigError
from eyenet.monitoring.monitor import Monitor, ScoreSummary
from eyenet.sources.factory import build_source
from eyenet.sources.incidents import Incident
from eyenet.sources.simulator import GARBAGE, SimulatedSource
from eyenet.store import open_store
from eyenet.streaming.collector import Collector
from eyenet.telemetry.schema import to_ms
from eyenet.telemetry.timespec import parse_since
from jobs.cli import build_parser, main
from jobs.ingest import parse_incident, progress_line, run_ingest, source_options, summarise
from jobs.options import IngestOptions

REPO = Path(__file__).resolve().parents[2]
NOW_S = 1_740_787_200.0  # 2025-03-01T00:00Z
NOW_MS = int(NOW_S * 1000)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


# -- actors: routing and splitting (no Ray) -------------------------------------------------------

DEVICE_IDS = [f"dev-{i:04d}" for i in range(1000)]


def test_importing_the_actor_modules_does_not_start_ray():
    """In a fresh interpreter (another hash seed): no ray import at all, and the same routes."""
    code = ("import json, sys\n"
            "import actors.collector, actors.features, actors.monitor, actors.pipeline\n"
            "import jobs.ingest, jobs.report\n"
            "from actors.collector import route\n"
            "print(json.dumps({'ray': 'ray' in sys.modules,\n"
            "                  'routes': [route(f'dev-{i:04d}', 3) for i in range(200)]}))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ray"] is False
    assert result["routes"] == [route(d, 3) for d in DEVICE_IDS[:200]]  # stable across processes


@pytest.mark.parametrize("n_actors", [1, 2, 3, 7])
def test_route_is_stable_and_in_range(n_actors):
    routes = [route(d, n_actors) for d in DEVICE_IDS]
    assert routes == [route(d, n_actors) for d in DEVICE_IDS]
    assert set(routes) == set(range(n_actors))


def test_route_spreads_devices_over_two_actors():
    counts = Counter(route(d, 2) for d in DEVICE_IDS)
    assert set(counts) == {0, 1}
    assert 400 <= counts[0] <= 600 and counts[0] + counts[1] == 1000


def fleet_frame(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(d, i) for d, n in sizes.items() for i in range(n)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))  # devices interleaved
    return pd.DataFrame([rows[i] for i in order], columns=["device_id", "seq"]).rename(
        index=lambda i: i * 10)  # an index that is not 0..n-1


def test_split_by_device_keeps_whole_devices_and_balances_rows():
    sizes = {"a": 50, "b": 30, "c": 20, "d": 20, "e": 10, "f": 5, "g": 1}
    frame = fleet_frame(sizes)
    parts = split_by_device(frame, 2)
    assert len(parts) == 2
    owners = [set(p["device_id"]) for p in parts]
    assert owners[0].isdisjoint(owners[1]) and owners[0] | owners[1] == set(sizes)
    for part, devices in zip(parts, owners, strict=True):
        assert len(part) == sum(sizes[d] for d in devices)  # every row of each device it holds
        assert part.index.is_monotonic_increasing  # the frame's own order and index
    loads = sorted(len(p) for p in parts)
    assert loads[1] - loads[0] <= max(sizes.values())
    assert loads == [66, 70]  # largest first, each onto the lighter part
    pd.testing.assert_frame_equal(pd.concat(parts).sort_index(), frame.sort_index())


def test_split_by_device_with_more_parts_than_devices_or_one_part():
    frame = fleet_frame({"a": 3, "b": 2})
    parts = split_by_device(frame, 5)
    assert sorted(len(p) for p in parts) == [2, 3]
    assert all(p["device_id"].nunique() == 1 for p in parts)
    (whole,) = split_by_device(frame, 1)
    pd.testing.assert_frame_equal(whole, frame)


# -- the collector over a fleet sending bad input ---------------------------------------------------

def test_collector_counts_every_injected_defect_and_stores_the_rest(store):
    cfg = EyeNetConfig(streaming={"fetch_chunk_s": 120})  # the backlog comes in several polls
    clock = Clock(NOW_S)
    src = SimulatedSource(cfg, devices=5, seed=1, garbage_rate=0.05, clock=clock)
    start_ms = src.now_ms() - 600_000
    collector = Collector(cfg, src, store, src.devices(), "sim-0", start_ms=start_ms, now_s=clock)
    polls = 0
    while not collector.poll().caught_up:
        polls += 1
    assert polls >= 4
    for _ in range(6):  # then live: 5 s between polls
        clock.now += 5
        assert collector.poll().caught_up
    until_ms = src.now_ms()
    assert until_ms == start_ms + 630_000

    stats = collector.stats()
    injected = src.garbage_between(start_ms, until_ms, src.devices())
    kinds = {reason.split(":")[0] for reason in injected}
    assert kinds == set(GARBAGE)  # every kind of defect occurred
    rejected_kinds = ("future_timestamp", "duplicate")
    assert stats["rejected"] == {k: injected[k] for k in rejected_kinds}
    value_defects = {k: n for k, n in injected.items() if k.split(":")[0] not in rejected_kinds}
    assert {k: n for k, n in stats["repaired"].items() if k.split(":")[0] in GARBAGE} == value_defects
    # the only other repairs: each device's first counter sample starts its baseline
    others = {k: n for k, n in stats["repaired"].items() if k.split(":")[0] not in GARBAGE}
    assert others == {f"counter_baseline:{m}": 5 for m in DEFAULT_COUNTER_METRICS}

    totals = stats["totals"]
    ticks = 5 * 630
    assert totals["fetched"] == ticks + injected["duplicate"]
    assert totals["rejected"] == injected["future_timestamp"] + injected["duplicate"]
    assert totals["accepted"] == totals["fetched"] - totals["rejected"]
    assert totals["accepted"] == ticks - injected["future_timestamp"]
    assert totals["stored"] == totals["accepted"] == store.count_samples()
    assert stats["pending_samples"] == 0 and stats["lag_s"] == 0.0

    stored = store.read_range()
    assert not stored.duplicated(["device_id", "timestamp"]).any()
    stamps = to_ms(stored["timestamp"])
    assert (stamps > start_ms).all() and (stamps <= until_ms).all()  # no future-stamped sample
    values = stored[cfg.metrics].to_numpy(np.float64)
    assert (values[np.isfinite(values)] >= 0).all()
    missing = int(np.isnan(values).sum())
    # defective values become missing (NaN) rather than being stored as they came
    assert missing >= sum(value_defects.values())


def test_collectors_poll_just_after_the_next_grid_tick():
    from actors.collector import POLL_AFTER_TICK_S, next_poll_delay_s

    # mid-interval: wait for the next tick plus the offset
    assert next_poll_delay_s(100.3, 1.0, 100.3) == pytest.approx(0.7 + POLL_AFTER_TICK_S)
    # a poll that just started right before a tick does not poll again at once
    assert next_poll_delay_s(100.97, 1.0, 100.96) == pytest.approx(1.03 + POLL_AFTER_TICK_S)
    # a slow poll that overran its interval polls at the next tick
    assert next_poll_delay_s(102.5, 1.0, 100.0) == pytest.approx(0.5 + POLL_AFTER_TICK_S)
    assert next_poll_delay_s(300.0, 60.0, 290.0) == pytest.approx(60.0 + POLL_AFTER_TICK_S)
