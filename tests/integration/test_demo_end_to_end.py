"""``python -m jobs.demo --json`` end to end, in a subprocess with its own Ray: every injected
incident is found, no quiet device alerts, the plots exist, and nothing is left running.

The demo starts its own local Ray (under a temp dir of its own, so the check that its
raylet is gone cannot mistake another cluster's for it) and shares nothing with the
session's Ray; a small fleet and the shortest live phase keep it to a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jobs.demo import MIN_SECONDS, incident_devices
from tests.helpers import free_port, processes_naming

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEVICES = 20  # the default fleet: what a new user meets (a smaller one trains a weaker model)



def processes_under(path: str) -> list[str]:
    """Ray processes (raylet, GCS, workers) whose command line names ``path`` (their session)."""
    return [f"{pid} {cmdline[:120]}" for pid, cmdline in processes_naming(path)]


def test_demo_finds_every_incident_and_leaves_nothing_running(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="eyd", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    demo_dir = tmp_path / "demo"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jobs.demo", "--dir", str(demo_dir), "--devices", str(DEVICES),
             "--history-s", "1800", "--seconds", str(MIN_SECONDS), "--train-time-s", "120", "--trials", "1",
             "--port", str(free_port()), "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
        assert done.returncode == 0, done.stderr[-4000:]
        summary = json.loads(done.stdout)
        assert "INFO" not in done.stderr, done.stderr[-4000:]  # Ray's own lines stay off
        missed = [r for r in summary["per_incident"] if not r["found"]]
        assert summary["event_recall"] == 1.0 and not missed, missed
        assert {r["device_id"] for r in summary["per_incident"]} == set(incident_devices(DEVICES))
        assert {r["kind"] for r in summary["per_incident"]} == {"ddos_burst", "latency_spike", "link_down",
                                                                "slow_exfiltration"}
        # the Tune search ran (one trial: each costs a Ray Train start, about a minute on 2
        # cores; choosing among several is test_training's) and its trial was promoted
        trials = summary["tune_trials"]
        assert len(trials) == 1 and trials[0]["epochs"] >= 1, trials
        assert summary["model_version"] == 1
        assert summary["mean_time_to_detect_s"] is not None and summary["event_precision"] is not None
        assert summary["api_docs_url"].endswith("/docs") and summary["dashboard_url"].startswith("http")
        plots = [Path(p) for p in summary["plots"]]
        assert len(plots) >= len(incident_devices(DEVICES)) + 1
        assert all(p.is_file() and p.stat().st_size > 1000 and p.parent == demo_dir / "plots" for p in plots)
        assert processes_under(ray_tmp) == []  # no raylet, GCS or worker of the demo's Ray
        # no quiet device alerts: the target, held since the short-history model
        # forecasts from its window's mean and the 1 Hz threshold keeps to its alarm budget
        assert summary["quiet_devices_alerting"] == [], summary["false_alerts"]
        assert summary["event_precision"] >= 0.8, summary["false_alerts"]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
