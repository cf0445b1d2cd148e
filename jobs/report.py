"""``eyenet report --since 1h``: latency, drift, alerts and anomalies over a time range.

The running monitor actor answers when this process can reach its cluster (``RAY_ADDRESS``
or ``--address``): its report includes the current, not yet saved period. Otherwise the
report is computed from the snapshots the monitor saved in the store (every
``monitor.snapshot_interval_s``), which needs no Ray at all.
"""

from __future__ import annotations

import os
import time
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError
from eyenet.telemetry.timespec import parse_since


def run_report(config: EyeNetConfig, since: str, until: str | None = None,
               address: str | None = None) -> dict[str, Any]:
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
            return ray.get(monitor.report.remote(since_s, until_s), timeout=60)
    from eyenet.monitoring.monitor import Monitor
    from eyenet.store import open_store

    return Monitor(config, open_store(config.store_uri), None, sinks=[]).report(since_s, until_s)


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    sys.exit(main(["report", *sys.argv[1:]]))
