"""``eyenet report --since 1h``: latency, drift, alerts and anomalies over a time range.

The running monitor actor answers when this process can reach its cluster (``RAY_ADDRESS``
or ``--address``): its report includes the current, not yet saved period. Otherwise the
report is computed from the snapshots the monitor saved in the store (every
``monitor.snapshot_interval_s``), which needs no Ray at all.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import yaml

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError
from eyenet.telemetry.timespec import parse_since
from jobs.options import ReportOptions, job_main


def run_report(config: EyeNetConfig, since: str, until: str | None = None,
               address: str | None = None, save: bool = False) -> dict[str, Any]:
    """The report over the range; reading writes nothing, ``save`` stores it (with its id)."""
    now_s = time.time()
    since_s = parse_since(since, now_s)
    until_s = parse_since(until, now_s) if until else None
    if until_s is not None and until_s <= since_s:
        raise ConfigError(f"--until ({until}) must be later than --since ({since})", "until", until)
    if address or os.environ.get("RAY_ADDRESS"):
        import ray

        from actors.monitor import find_monitor

        ray.init(address=address or os.environ["RAY_ADDRESS"], logging_level="WARNING")
        monitor = find_monitor()
        if monitor is not None:
            method = monitor.save_report if save else monitor.report
            return ray.get(method.remote(since_s, until_s), timeout=60)
    from eyenet.monitoring.reports import build_report
    from eyenet.store import open_store

    store = open_store(config.store_uri)
    report = build_report(store, since_s, until_s)
    if save:
        report["report_id"] = store.save_report(report)
    return report


def main(config: EyeNetConfig, options: ReportOptions) -> int:
    report = run_report(config, options.since, options.until, options.address, save=options.save)
    if options.json:
        print(json.dumps(report, default=str))
        return 0
    print(yaml.safe_dump(json.loads(json.dumps(report, default=str)), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ReportOptions, main, prog="python -m jobs.report",
                              description=__doc__))
