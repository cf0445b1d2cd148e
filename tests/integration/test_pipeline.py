"""The live pipeline on the shared local Ray: collectors, feature pool, monitor.

Each test gets its own store (and kills the named monitor afterwards, since a detached
monitor would otherwise carry one test's store into the next). Simulated fleets run a
backlog (cursors start in the past), so minutes of telemetry pass in seconds; every wait
is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from actors.collector import LiveCollectors
from eyenet.config import EyeNetConfig
from eyenet.models.registry import ModelRegistry
from eyenet.sources.incidents import Incident
from eyenet.sources.simulator import SimulatedSource
from eyenet.store import open_store
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, to_ms
from eyenet.telemetry.validation import TelemetryValidator
from tests.helpers import wait_for
from tests.synthetic import DEVICES, SEED, make_config

pytestmark = pytest.mark.usefixtures("ray_cluster")



@pytest.fixture
def monitor_cleanup() -> Iterator[None]:
    yield
    import ray

    from actors.monitor import find_monitor

    monitor = find_monitor()
    if monitor is not None:
        ray.kill(monitor, no_restart=True)
        wait_for(lambda: find_monitor() is None, 30, "the monitor to go")


def promote(config: EyeNetConfig, model_dir: Path) -> None:
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    copy = Path(config.artifact_root).parent / "upload"
    shutil.copytree(model_dir, copy)
    mv = registry.register(copy)
    registry.promote(mv.name, mv.version)


def run_backlog(config: EyeNetConfig, options: dict, backlog_s: int, score: bool = True):
    """Start a pipeline whose cursors begin ``backlog_s`` ago; return it once it caught up."""
    from actors.pipeline import start_pipeline

    now_s = time.time()
    pipeline = start_pipeline(config, "simulated", {"devices": DEVICES, "seed": SEED, "origin_wall_s": now_s,
                                                    **options},
                              start_ms=int(now_s * 1000) - backlog_s * 1000, score=score)
    return pipeline, int(now_s * 1000)


def caught_up(pipeline, until_ms: int, kind: str = "simulated") -> bool:
    stats = pipeline.stats()
    if any(c["lag_s"] > 5 or c["pending_samples"] for c in stats["collectors"]):
        return False
    state = [open_store(pipeline.config.store_uri).get_state(f"collector/{kind}-{i}")
             for i in range(len(pipeline.collectors))]
    return all(s and min(d["cursor_ms"] for d in s["devices"]) >= until_ms for s in state)


def scored_everything(pipeline) -> bool:
    stats = pipeline.stats()
    return stats["scored"] >= stats["stored"] > 0


def test_killed_collector_restarts_and_stores_exactly_the_generated_samples(tmp_path, monitor_cleanup):
    import ray

    config = make_config(tmp_path, streaming={"fetch_chunk_s": 5})
    pipeline, now_ms = run_backlog(config, {}, backlog_s=240, score=False)
    victim = pipeline.collectors[0]
    before = wait_for(lambda: (s := ray.get(victim.stats.remote()))["totals"].get("stored", 0) > 100 and s,
                      what="first samples")
    ray.kill(victim, no_restart=False)
    # the restarted actor answers again and moves on past the kill
    wait_for(lambda: caught_up(pipeline, now_ms + 3000), what="every collector to catch up after the kill")
    assert ray.get(victim.stats.remote())["pid"] != before["pid"], "Ray restarted the collector"
    # Serve's replicas find the running collectors by name and read live windows from them
    recent = asyncio.run(LiveCollectors().recent(["dev-0001", "nobody"]))
    assert set(recent[DEVICE]) == {"dev-0001"}
    assert len(recent) == config.detector.window_steps + 1 + config.detector.smoothing
    assert recent[TIMESTAMP].is_monotonic_increasing
    pipeline.stop()

    store = open_store(config.store_uri)
    source = SimulatedSource(config, devices=DEVICES, seed=SEED, origin_wall_s=now_ms / 1000)
    for i in range(len(pipeline.groups)):
        state = store.get_state(f"collector/simulated-{i}")
        for entry in state["devices"]:
            device, until = entry["device_id"], entry["cursor_ms"]
            raw = source.fetch([device], now_ms - 240_000, until).samples
            want = TelemetryValidator(config).validate(raw).accepted
            have = store.read_range(device_ids=[device])
            have = have[to_ms(have[TIMESTAMP]) <= until].reset_index(drop=True)
            assert len(have) == len(want) > 200, device
            pd.testing.assert_frame_equal(have, want, check_dtype=False)


def test_killed_monitor_comes_back_with_its_open_alerts(tmp_path, monitor_cleanup):
    import ray

    from actors.monitor import get_monitor
    from eyenet.monitoring.monitor import ScoreSummary

    config = make_config(tmp_path)
    monitor = get_monitor(config)
    slow = ScoreSummary(sent_at_s=time.time(), latency_ms=450.0, n_windows=10, device_counts={"d1": 10},
                        anomalies=[], feature_counts={}, model_version=None)
    ray.get(monitor.record.remote(slow))
    opened = ray.get(monitor.check.remote())
    assert [a["kind"] for a in opened] == ["latency"]
    ray.kill(monitor, no_restart=False)
    alerts = wait_for(lambda: ray.get(monitor.open_alerts.remote(), timeout=60), what="the restarted monitor")
    assert [a["event_id"] for a in alerts] == [opened[0]["event_id"]]
    assert alerts[0]["status"] == "open"


def test_injected_incidents_raise_deduplicated_alerts_naming_device_and_metric(tmp_path, trained_model,
                                                                               monitor_cleanup):
    import ray

    config = make_config(tmp_path)
    promote(config, trained_model[0])
    now_ms = int(time.time() * 1000)
    incidents = [Incident("dev-0002", "ddos_burst", now_ms - 400_000, now_ms - 280_000, [], 20.0),
                 Incident("dev-0004", "latency_spike", now_ms - 250_000, now_ms - 130_000, [], 10.0)]
    pipeline, now_ms = run_backlog(config, {"incidents": incidents}, backlog_s=600)
    wait_for(lambda: caught_up(pipeline, now_ms) and scored_everything(pipeline), what="the backlog scored")
    pipeline.stop()
    store = open_store(config.store_uri)

    def alerts_for(device: str):
        return store.list_events(kind="device_anomaly", device_id=device)

    wait_for(lambda: alerts_for("dev-0002") and alerts_for("dev-0004"), 30, "device anomaly alerts")
    spans = {i.device_id: (i.start_ms, i.end_ms) for i in incidents}
    for device, metrics in (("dev-0002", {"bytes_in", "packets_in"}), ("dev-0004", {"latency"})):
        alerts = alerts_for(device)
        assert len(alerts) == 1, f"{device}: one deduplicated alert, got {len(alerts)}"
        assert set(alerts[0].metrics) & metrics, f"{device} alert names {alerts[0].metrics}"
        anomalies = store.list_events(kind="anomaly", device_id=device)
        # the episode the incident opened names its metrics (a stray one-point episode
        # elsewhere in the backlog is not the incident's)
        start, end = spans[device]
        during = [e for e in anomalies if e.payload["start_ms"] <= end and e.payload["end_ms"] >= start]
        assert during and any(set(e.metrics) & metrics for e in during), [e.metrics for e in anomalies]
        points = sum(e.payload["points"] for e in anomalies)
        assert points > 3 * config.alerts.anomaly_min_points, "many anomalous points, one alert"
    live = {a["device_id"] for a in ray.get(pipeline.monitor.open_alerts.remote())
            if a["kind"] == "device_anomaly"}
    assert {"dev-0002", "dev-0004"} <= live
    # the report over the run counts those anomalies and alerts; saving it is its own call
    report = ray.get(pipeline.monitor.save_report.remote(now_ms / 1000 - 60, None))
    per_device = {r["device_id"]: r["anomalies"] for r in report["anomalies_by_device"]}
    assert per_device.get("dev-0002", 0) > 3 and per_device.get("dev-0004", 0) > 3
    assert report["alerts"]["by_kind"].get("device_anomaly", 0) >= 2
    assert report["windows_scored"] > 0 and report["latency"]["count"] > 0
    assert store.get_report(report["report_id"])["windows_scored"] == report["windows_scored"]


def test_ingest_command_builds_history_and_counts_bad_samples(tmp_path, monitor_cleanup, capsys):
    import json

    from jobs.cli import main

    uri = f"sqlite:///{tmp_path}/eyenet.db"
    code = main(["ingest", "--source", "simulated", "--devices", "4", "--history-s", "120",
                 "--until-caught-up", "--no-score", "--garbage-rate", "0.05", "--json",
                 "--store", uri, "--artifact-root", str(tmp_path / "artifacts")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["devices"] == 4
    assert summary["totals"]["stored"] == open_store(uri).count_samples() >= 4 * 110
    assert summary["totals"]["rejected"] > 0
    assert any(k.startswith(("future_timestamp", "duplicate")) for k in summary["reasons"])


@pytest.mark.parametrize("drifted", [False, True], ids=["clean", "drifted"])
def test_drift_alert_only_for_a_drifted_feed(tmp_path, trained_model, monitor_cleanup, drifted):
    """The training history replayed as is (clean) and with latency ten times higher."""
    import ray

    from actors.pipeline import start_pipeline

    model_dir, history = trained_model
    # the replayed file holds rates already; drift is judged once most of the feed is in,
    # since the first chunks of a backlog hold a few devices only (not the fleet's mix)
    config = make_config(tmp_path, counter_metrics=[], monitor={"min_drift_samples": 6000})
    promote(config, model_dir)
    feed = history.copy()
    if drifted:
        feed["latency"] *= 10
    path = tmp_path / "feed.csv"
    feed.to_csv(path, index=False)
    pipeline = start_pipeline(config, "replay", {"paths": [str(path)], "speed": math.inf})
    last_ms = int(to_ms(feed[TIMESTAMP]).max())
    wait_for(lambda: caught_up(pipeline, last_ms, "replay") and scored_everything(pipeline),
             what="the feed scored")
    ray.get(pipeline.monitor.check.remote())
    stats = ray.get(pipeline.monitor.stats.remote())
    pipeline.stop()
    drift_alerts = [a for a in ray.get(pipeline.monitor.open_alerts.remote()) if a["kind"] == "drift"]
    if drifted:
        assert {m for a in drift_alerts for m in a["metrics"]} == {"latency"}, stats["drift"]
    else:
        assert drift_alerts == [], stats["drift"]


def test_the_device_list_reloads_into_a_running_pipeline(tmp_path, monitor_cleanup, components):
    from actors.pipeline import start_pipeline
    from eyenet.errors import ConfigError
    from eyenet.sources.specs import DeviceSpec

    def exporter(device_id):
        return {"id": device_id, "node_exporter": {"url": components.node_exporter_url, "interface": "lo"}}

    config = make_config(tmp_path, sample_interval_s=2.0, devices=[exporter("ne-a")])
    store = open_store(config.store_uri)
    pipeline = start_pipeline(config, "devices", {}, score=False)

    def rows(device):
        frame = store.read_range(None, None)
        return int((frame[DEVICE] == device).sum())

    try:
        wait_for(lambda: rows("ne-a") >= 2, 60, "ne-a's first samples")
        change = pipeline.reload_devices([DeviceSpec(**exporter("ne-a")), DeviceSpec(**exporter("ne-b"))])
        assert change["added"] == ["ne-b"] and change["removed"] == []
        wait_for(lambda: rows("ne-b") >= 2, 60, "the added device's samples")
        # ne-a's collector was replaced with the group, yet kept its counter baseline
        before = rows("ne-a")
        wait_for(lambda: rows("ne-a") >= before + 2, 60, "ne-a to go on after the reload")
        frame = store.read_range(None, None)
        assert frame[frame[DEVICE] == "ne-a"]["bytes_in"].isna().sum() == 1   # its one baseline
        bad = {"id": "ne-c", "node_exporter": {"url": components.node_exporter_url,
                                               "metrics": {"jitter": "node_load1"}}}
        with pytest.raises(ConfigError, match="jitter"):
            pipeline.reload_devices([DeviceSpec(**exporter("ne-b")), DeviceSpec(**bad)])
        change = pipeline.reload_devices([DeviceSpec(**exporter("ne-b"))])
        assert change["removed"] == ["ne-a"]
        gone_at = rows("ne-a")
        before_b = rows("ne-b")
        wait_for(lambda: rows("ne-b") >= before_b + 2, 60, "ne-b to go on alone")
        assert rows("ne-a") <= gone_at + 1        # at most the poll in flight at the reload
        assert pipeline.groups == [["ne-b"]]
    finally:
        pipeline.stop()
