"""``eyenet ingest`` / ``python -m jobs.ingest``: run the live pipeline from a source.

``--history-s H`` starts every device's cursor H seconds back, so the collectors first
generate (simulated) or read (replay) that much history as fast as the machine allows,
then follow the live clock; ``--until-caught-up`` stops there (history for training).
Otherwise it runs for ``--seconds`` or until interrupted, printing progress.

``--source devices`` polls the config's ``devices`` (SNMP agents, node_exporters,
Prometheus queries); editing the config file, or ``kill -HUP`` of this process, reloads
the device list without restarting the pipeline.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError
from eyenet.sources.incidents import Incident
from eyenet.sources.watch import DeviceListWatch
from jobs.options import IngestOptions, job_main

PROGRESS_EVERY_S = 10.0
CAUGHT_UP_LAG_INTERVALS = 3
INCIDENT_RE = re.compile(
    r"^(?P<kind>[a-z_]+):(?P<device>[^:]+):(?P<start>-?\d+(\.\d+)?):(?P<dur>\d+(\.\d+)?)$")


def parse_incident(text: str, origin_ms: int) -> Incident:
    """``KIND:DEVICE:START_S:DURATION_S``, START_S relative to the ingest's start."""
    match = INCIDENT_RE.match(text)
    if not match:
        raise ConfigError(f"--incident {text!r} must look like KIND:DEVICE:START_S:DURATION_S, "
                          "e.g. ddos_burst:dev-0003:120:300", "incident", text)
    start_ms = origin_ms + int(float(match["start"]) * 1000)
    return Incident(device_id=match["device"], kind=match["kind"], start_ms=start_ms,
                    end_ms=start_ms + int(float(match["dur"]) * 1000), metrics=[], magnitude=0.0)


def source_options(args: IngestOptions, now_s: float) -> tuple[dict[str, Any], int | None]:
    """Source options from CLI arguments, and the collectors' start cursor."""
    origin_ms = int(now_s * 1000)
    start_ms = origin_ms - int(args.history_s * 1000) if args.history_s else None
    if args.source == "replay":
        return {"paths": list(args.files), "speed": args.speed, "origin_wall_s": now_s}, None
    if args.source == "devices":  # the config's devices: live, so no history and no clock of its own
        return {}, None
    options: dict[str, Any] = {"devices": args.devices, "seed": args.seed, "speed": args.speed,
                               "origin_wall_s": now_s, "garbage_rate": args.garbage_rate,
                               "incident_rate_per_device_day": args.incident_rate}
    if args.incident:
        options["incidents"] = [parse_incident(t, origin_ms) for t in args.incident]
    return options, start_ms


def run_ingest(config: EyeNetConfig, args: IngestOptions) -> dict[str, Any]:
    from actors.pipeline import start_pipeline
    from eyenet.sources.factory import build_source
    from jobs._ray import ensure_ray

    now_s = time.time()
    options, start_ms = source_options(args, now_s)
    build_source(args.source, config, **options).close()  # bad options fail here, before Ray starts
    ensure_ray()
    pipeline = start_pipeline(config, args.source, options, start_ms=start_ms, score=not args.no_score)
    watch = reload_on_change(config) if args.source == "devices" else None
    started = time.time()
    next_progress = started + PROGRESS_EVERY_S
    try:
        while True:
            time.sleep(1.0)  # the driver only watches; the actors do the work
            if watch is not None:
                reload_devices(pipeline, watch)
            if args.seconds is not None and time.time() - started >= args.seconds:
                break
            if args.until_caught_up or time.time() >= next_progress:
                stats = pipeline.stats()
                lag_s = max(c["lag_s"] for c in stats["collectors"])
                if time.time() >= next_progress:
                    print(progress_line(stats, lag_s, time.time() - started), flush=True)
                    next_progress += PROGRESS_EVERY_S
                if args.until_caught_up and lag_s <= CAUGHT_UP_LAG_INTERVALS * config.sample_interval_s:
                    break
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    final = pipeline.stop()
    return summarise(final, time.time() - started)


def reload_on_change(config: EyeNetConfig) -> DeviceListWatch:
    """Watch the config file for a new device list, and re-read it on SIGHUP too."""
    watch = DeviceListWatch(config)
    if watch.path is None:
        print("devices come from the environment, not a file: the device list will not reload", flush=True)
    elif threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, watch.request)
    return watch


def reload_devices(pipeline: Any, watch: DeviceListWatch) -> None:
    devices = watch.check()
    if devices is None:
        return
    try:
        change = pipeline.reload_devices(devices)
    except ConfigError as exc:   # e.g. a device mapping a metric the running config lacks
        print(f"device list not reloaded: {exc}", flush=True)
        return
    print(f"device list reloaded: added {change['added']}, removed {change['removed']}, "
          f"changed {change['changed']}", flush=True)


def progress_line(stats: dict[str, Any], lag_s: float, elapsed_s: float) -> str:
    rejected = sum(c["totals"].get("rejected", 0) for c in stats["collectors"])
    return (f"[{elapsed_s:6.0f} s] stored {stats['stored']:,} samples, scored {stats['scored']:,}, "
            f"rejected {rejected:,}, lag {lag_s:.1f} s")


def summarise(final: dict[str, Any], seconds: float) -> dict[str, Any]:
    collectors = final["collectors"]
    totals: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for c in collectors:
        for key, value in c["totals"].items():
            totals[key] = totals.get(key, 0) + value
        for key, value in {**c["rejected"], **{f"repaired:{k}": v for k, v in c["repaired"].items()}}.items():
            reasons[key] = reasons.get(key, 0) + value
    scorers = final.get("feature_actors", [])
    return {"seconds": round(seconds, 1), "devices": sum(c["devices"] for c in collectors),
            "totals": totals, "reasons": reasons,
            "scored": sum(s["totals"].get("samples", 0) for s in scorers),
            "anomalies": sum(s["totals"].get("anomalies", 0) for s in scorers),
            "failing_devices": {d: v for c in collectors for d, v in c["failing_devices"].items()},
            "silent_devices": [d for c in collectors for d in c["silent_devices"]]}


def main(config: EyeNetConfig, options: IngestOptions) -> int:
    summary = run_ingest(config, options)
    if options.json:
        print(json.dumps(summary))
        return 0
    totals = summary["totals"]
    print(f"{summary['devices']} devices, {summary['seconds']} s: fetched {totals.get('fetched', 0):,}, "
          f"stored {totals.get('stored', 0):,}, rejected {totals.get('rejected', 0):,}, "
          f"scored {summary['scored']:,}, anomalies {summary['anomalies']:,}")
    for reason, n in sorted(summary["reasons"].items()):
        print(f"  {reason}: {n:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(IngestOptions, main, prog="python -m jobs.ingest",
                              description=__doc__))
