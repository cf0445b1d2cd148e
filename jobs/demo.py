"""``eyenet demo``: the whole system end to end on a local Ray and an embedded SQLite store.

1. **History.** Collectors ingest ``--history-s`` of simulated telemetry for ``--devices``
   devices (with a little garbage, which they repair or reject) as fast as they can.
2. **Tune.** A short Ray Tune search (``--trials``, one after another within
   ``--train-time-s``; ASHA stops poor trials early) fits the LSTM detector, each trial a Ray
   Train run, shown as a progress bar per trial; the best trial is registered in staging,
   then promoted through the label-free replay gate.
3. **Serve.** The HTTP API goes up on Ray Serve (``http://HOST:PORT``, OpenAPI at /docs).
4. **Live.** The pipeline follows the live clock for ``--seconds`` while four incidents
   (ddos_burst, latency_spike, link_down, slow_exfiltration) hit four devices and the rest
   stay quiet; the demo asks ``/v1/predict`` about every device every few seconds and shows
   the fleet as a table refreshed in place (plain lines without a terminal, or ``--plain``).
5. **Score.** The anomaly events and alerts are measured against the injected incidents
   (:mod:`jobs.demo_scoring`: event recall and precision, false alerts on quiet devices, time
   to detect), with the monitor's latency and drift figures; a PNG per device that alerted
   and one quiet device; ``--json`` prints it all as one object. Serve and the Ray the demo
   started are then shut down (``--keep-serving``: after Ctrl-C). Ray's own log lines stay
   off unless ``--verbose``.

Everything lives under ``--dir`` (default ``./eyenet-demo``), never in the configured
store, so the demo can run anywhere and again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError
from jobs.demo_live import Poller, run_live
from jobs.demo_scoring import score_demo, span_of_event
from jobs.demo_view import LiveView, TuneView, plot_device, print_summary
from jobs.options import EXIT_ERROR, DemoOptions, IngestOptions, TrainOptions, job_main

# The incidents of the live phase: (kind, start after the live phase starts in s, duration
# in s, magnitude or None: the kind's default), each on its own device (spread over the
# fleet by ``incident_devices``). Late enough that the replicas are warm, long enough to
# see; the live phase must outlast them. Exfiltration ramps bytes_out up to 1 + magnitude
# times its normal rate at the end; at the default 3 a minute is too short to stand out.
INCIDENTS = (("ddos_burst", 20, 30, None), ("latency_spike", 25, 30, None), ("link_down", 30, 25, None),
             ("slow_exfiltration", 10, 55, 12.0))
MIN_SECONDS = max(s + d for _, s, d, _ in INCIDENTS) + 10
_STARTED: dict[str, Any] = {}  # whether this process started its Ray; where Ray's lines go
MIN_DEVICES = len(INCIDENTS) + 1  # at least one quiet device


def device_name(index: int) -> str:
    return f"dev-{index:04d}"


def incident_devices(devices: int) -> list[str]:
    """One device per incident, spread over the fleet (20 devices: 2, 7, 12, 17)."""
    return [device_name((2 * k + 1) * devices // (2 * len(INCIDENTS))) for k in range(len(INCIDENTS))]


def demo_search_space() -> dict[str, Any]:
    """Networks small enough that a few trials finish epochs within the demo's budget on a
    laptop (the default space reaches 128 x 2 layers, minutes per epoch there)."""
    from ray import tune

    return {"hidden_size": tune.choice([16, 32]), "num_layers": 1, "window_steps": tune.choice([20, 30]),
            "learning_rate": tune.loguniform(2e-3, 1e-2), "dropout": 0.0}


def demo_config(base: EyeNetConfig, directory: Path, port: int | None, train_time_s: float,
                trials: int) -> EyeNetConfig:
    """The demo's own store and artifacts under ``directory``. Trials run one after another
    (at once, on 2 cores, none finished an epoch in 90 s), and a trial's Ray Train start
    (controller, worker, Ray Data) takes about a minute there, so each trains for a quarter
    of its share of the search's ``train_time_s``."""
    data = base.to_dict()
    data["store_uri"] = f"sqlite:///{directory / 'eyenet.db'}"
    data["artifact_root"] = str(directory / "artifacts")
    data["detector"] = {**data["detector"], "max_train_time_s": train_time_s / (4 * trials)}
    if port is not None:
        data["serve"] = {**data["serve"], "port": port}
    return EyeNetConfig.from_dict(data)


def run_demo(base: EyeNetConfig, options: DemoOptions, out: TextIO) -> dict[str, Any]:
    """Run the five steps; returns the summary (``jobs.demo_scoring`` plus the report's figures)."""
    from eyenet.models.gates import promotion_gates
    from eyenet.models.registry import ModelRegistry
    from eyenet.store import open_store
    from jobs.ingest import run_ingest
    from jobs.train import run_train

    n = options.devices
    if n < MIN_DEVICES:
        raise ConfigError(f"--devices must be at least {MIN_DEVICES} (one per incident and a quiet one), "
                          f"got {n}", "devices", n)
    if options.seconds < MIN_SECONDS:
        raise ConfigError(f"--seconds must be at least {MIN_SECONDS} to see every incident end, "
                          f"got {options.seconds}", "seconds", options.seconds)
    root = Path(options.dir).resolve()
    shutil.rmtree(root, ignore_errors=True)  # a fresh store each run: the demo's own
    root.mkdir(parents=True)
    config = demo_config(base, root, options.port, options.train_time_s, options.trials)
    started = time.time()

    def step(text: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {text}", file=out, flush=True)

    dashboard_url = start_ray(options.verbose, root / "ray.log")
    step(f"1/5 ingesting {options.history_s:g} s of history for {n} simulated devices into "
         f"{config.store_uri}")
    with redirect_stdout(out):
        history = run_ingest(config, IngestOptions(source="simulated", devices=n, history_s=options.history_s,
                                                   until_caught_up=True, garbage_rate=0.002, no_score=True))
    totals, reasons = history["totals"], history["reasons"]
    rejected = {k: v for k, v in reasons.items() if not k.startswith("repaired:")}
    repaired = sum(v for k, v in reasons.items() if k.startswith("repaired:"))
    why = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
    step(f"    stored {totals.get('stored', 0):,} samples; repaired {repaired:,} values; rejected "
         f"{totals.get('rejected', 0):,} samples ({why})")

    step(f"2/5 tuning the LSTM detector: {options.trials} trials on Ray Tune, each a Ray Train run "
         f"(search budget {options.train_time_s:g} s, early stopping by validation loss)")
    tuning = TuneView(config.detector.max_epochs, plain=options.plain or options.json, out=out)
    with tuning, redirect_stdout(out):
        mv = run_train(config, TrainOptions(from_store=True, tune=True, trials=options.trials,
                                            time_budget_s=options.train_time_s),
                       tune_kw={"on_trial_result": tuning.on_result, "search_space": demo_search_space()})
    for line in tuning.summary_lines(mv.metrics.get("tuned_params")):
        step(line)
    store = open_store(config.store_uri)
    registry = ModelRegistry(store, config.artifact_root)
    mv = registry.promote(mv.name, mv.version, gates=promotion_gates(config, registry))
    loss = mv.metrics.get("best_val_loss", float("nan"))
    step(f"    v{mv.version} {mv.state}: best validation loss {loss:.4f}; "
         f"gate {json.dumps(mv.gate_report, sort_keys=True)}")

    step("3/5 starting the HTTP API on Ray Serve")
    url = start_serve(config, out, options.verbose)
    step(f"    {url}/docs")

    fleet = [device_name(i) for i in range(n)]
    hit = incident_devices(n)
    planned = [(kind, device, start, duration, magnitude)
               for (kind, start, duration, magnitude), device in zip(INCIDENTS, hit, strict=True)]
    step(f"4/5 live for {options.seconds:g} s with incidents: "
         + "; ".join(f"{k} on {d} at +{s} s for {t} s" for k, d, s, t, _ in planned))
    poller = Poller(url, fleet, store, time.time())
    view = LiveView(fleet, {d: k for k, d, *_ in planned}, plain=options.plain or options.json, out=out)
    with view, redirect_stdout(out):
        poller.start(view)
        try:
            live, truths, live_started_s = run_live(config, n, options.seconds, planned)
        finally:
            poller.stop()
    step(f"    scored {live['scored']:,} samples, {live['anomalies']:,} anomalous")

    step("5/5 scoring the live phase against the injected incidents")
    report = _monitor_report(config, live_started_s - 1)
    now_ms = int(time.time() * 1000)
    events = store.list_events(since=live_started_s - 600, limit=100_000)
    spans = [s for s in (span_of_event(e, now_ms) for e in events) if s is not None]
    summary = score_demo(truths, spans, fleet)
    plot_dir = root / "plots"
    plot_dir.mkdir()
    alerted = sorted({s.device_id for s in spans} | set(hit))
    quiet = next((d for d in fleet if d not in alerted), None)
    plots = []
    for device in alerted + ([quiet] if quiet else []):
        telemetry = store.read_range(pd.Timestamp(live_started_s - 60, unit="s", tz="UTC"), None,
                                     device_ids=[device])
        plots.append(str(plot_device(plot_dir / f"{device}.png", device, telemetry, config.metrics,
                                     poller.history.get(device, []),
                                     [s for s in spans if s.device_id == device],
                                     [t for t in truths if t.device_id == device])))
    drift = report.get("drift", {})
    worst = sorted((drift.get("per_feature") or {}).items(), key=lambda kv: -kv[1])[:3]
    latency = report.get("latency", {})
    summary.update(
        devices=n, model_version=mv.version, history_samples=totals.get("stored", 0),
        live_samples_scored=live["scored"], live_anomalous_samples=live["anomalies"],
        alerts_by_kind=report.get("alerts", {}).get("by_kind", {}),
        latency_p50_ms=latency.get("p50_ms"), latency_p99_ms=latency.get("p99_ms"),
        drift_overall=drift.get("overall"), drift_worst=", ".join(f"{f} {v:.3f}" for f, v in worst),
        tune_trials=[{**r["params"], "epochs": r["epochs"], "best_val_loss": r["best_val_loss"]}
                     for r in sorted(tuning.trials.values(), key=lambda r: r["number"])],
        predictions=poller.answered, prediction_failures=poller.failed,
        api_docs_url=f"{url}/docs", dashboard_url=dashboard_url, plot_dir=str(plot_dir), plots=plots,
        dir=str(root), wall_s=round(time.time() - started, 1))
    return summary


@contextmanager
def std_fds_to(path: Path | None) -> Iterator[None]:
    """File descriptors 1 and 2 appended to ``path`` for the block: where Ray's C++ code and
    its driver-side log listeners write, around the calls that make them talk."""
    if path is None:
        yield
        return
    saved = []
    with open(path, "ab") as log:
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stream.flush()
            saved.append((fd, os.dup(fd), stream))
            os.dup2(log.fileno(), fd)
    try:
        yield
    finally:
        for fd, copy, stream in saved:
            stream.flush()
            os.dup2(copy, fd)
            os.close(copy)


def start_ray(verbose: bool, log_path: Path) -> str | None:
    """A local Ray (or the ``RAY_ADDRESS`` one), quiet unless ``--verbose``; its dashboard URL."""
    import ray

    from jobs._ray import quiet_train_and_data

    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the core worker's C++ lines
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        quiet_train_and_data()
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    level = logging.INFO if verbose else logging.ERROR
    with std_fds_to(None if verbose else log_path):  # what Ray's C++ side says as it starts
        context = ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level=level,
                           log_to_driver=verbose, include_dashboard=True)
    quiet_ray_loggers(verbose)
    _STARTED.update(local_ray=not os.environ.get("RAY_ADDRESS"), log=None if verbose else log_path)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def quiet_ray_loggers(verbose: bool) -> None:
    if not verbose:
        for name in ("ray", "ray.serve", "ray.train", "ray.data", "ray.tune", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)


def start_serve(config: EyeNetConfig, out: TextIO, verbose: bool) -> str:
    from ray import serve

    from jobs.serve import run_serve

    with redirect_stdout(out):
        if not verbose:  # Serve sets its driver logger up at INFO as it starts
            logging.disable(logging.WARNING)
        try:
            serve.start(http_options={"host": config.serve.host, "port": config.serve.port},
                        logging_config={"log_level": "INFO" if verbose else "ERROR"})
            quiet_ray_loggers(verbose)
            url = run_serve(config, detach=True)["url"]
        finally:
            logging.disable(logging.NOTSET)
    return str(url)


def wait_for_interrupt(url: str, out: TextIO) -> None:
    """``--keep-serving``: a local Ray ends with its driver, so the demo stays until Ctrl-C."""
    print(f"serving on {url} (docs at {url}/docs); Ctrl-C to stop", file=out, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def stop_everything() -> None:
    """Take the application, Serve and the Ray this process joined or started down."""
    import ray

    if not ray.is_initialized():
        return
    from ray import serve

    from serve_app.deployments import APP_NAME

    with std_fds_to(_STARTED.get("log")):  # the raylet's word on the controller it killed
        try:
            serve.delete(APP_NAME)
            if _STARTED.get("local_ray"):  # on a cluster the demo joined, Serve may hold others' apps
                serve.shutdown()
        except Exception:  # Serve may never have started; Ray still goes down
            pass
        ray.shutdown()  # a local Ray ends with it; a joined cluster is only disconnected from


def _monitor_report(config: EyeNetConfig, since_s: float) -> dict[str, Any]:
    """The running monitor's report (it includes the period not yet saved)."""
    import ray

    from actors.monitor import find_monitor
    from eyenet.monitoring.reports import build_report
    from eyenet.store import open_store

    monitor = find_monitor()
    if monitor is not None:
        return ray.get(monitor.report.remote(since_s, None), timeout=60)
    return build_report(open_store(config.store_uri), since_s, None)


def main(config: EyeNetConfig, options: DemoOptions) -> int:
    out = sys.stderr if options.json else sys.stdout  # --json: stdout holds the JSON object only
    try:
        summary = run_demo(config, options, out)
        if options.json:
            print(json.dumps(summary, default=str), flush=True)
        else:
            print_summary(summary, plain=options.plain)
        if options.keep_serving:
            wait_for_interrupt(summary["api_docs_url"].removesuffix("/docs"), out)
    finally:
        stop_everything()
    return 0 if summary["event_recall"] == 1.0 else EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(job_main(DemoOptions, main, prog="python -m jobs.demo",
                              description=__doc__))
