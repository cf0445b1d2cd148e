"""``eyenet demo``: the whole system end to end on a local Ray and an embedded SQLite store.

1. **History.** Collectors ingest ``--history-s`` of simulated telemetry for ``--devices``
   devices (with a little garbage, which they repair or reject) as fast as they can.
2. **Train.** Ray Train fits the LSTM detector on that history; it is registered in
   staging, then promoted through the label-free replay gate.
3. **Serve.** The HTTP API goes up on Ray Serve (``http://HOST:PORT``, OpenAPI at /docs).
4. **Live.** The pipeline follows the live clock for ``--seconds`` with two injected
   incidents (a DDoS burst and a latency spike) while the demo asks ``/v1/predict`` about
   those devices and a quiet one every few seconds.
5. **Report.** What the monitor saw: anomalies per device and the metrics that gave them
   away, alerts, latency; the application is then taken down.

Everything lives under ``--dir`` (default ``./eyenet-demo``), never in the configured
store, so the demo can run anywhere and again.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError, PipelineError
from jobs.options import EXIT_ERROR, DemoOptions, IngestOptions, TrainOptions, job_main

# The incidents of the live phase: (kind, device index, start after the live phase
# starts in s, duration in s). Late enough that the replicas are warm, long enough to see.
INCIDENTS = (("ddos_burst", 3, 20, 50), ("latency_spike", 7, 35, 40))
PREDICT_EVERY_S = 10.0


def demo_config(base: EyeNetConfig, directory: Path, port: int | None, train_time_s: float) -> EyeNetConfig:
    data = base.to_dict()
    data["store_uri"] = f"sqlite:///{directory / 'eyenet.db'}"
    data["artifact_root"] = str(directory / "artifacts")
    data["detector"] = {**data["detector"], "max_train_time_s": train_time_s}
    if port is not None:
        data["serve"] = {**data["serve"], "port": port}
    return EyeNetConfig.from_dict(data)


def run_demo(base: EyeNetConfig, *, directory: str, devices: int, history_s: float, seconds: float,
             port: int | None = None, train_time_s: float = 60.0) -> dict[str, Any]:
    from eyenet.models.gates import promotion_gates
    from eyenet.models.registry import ModelRegistry
    from eyenet.store import open_store
    from jobs.ingest import run_ingest
    from jobs.serve import run_serve
    from jobs.train import run_train

    if devices < max(i for _, i, _, _ in INCIDENTS) + 2:
        raise ConfigError(f"--devices must be at least 9 (the incidents hit dev-0003 and dev-0007), "
                          f"got {devices}", "devices", devices)
    if seconds < max(s + d for _, _, s, d in INCIDENTS):
        raise ConfigError(f"--seconds must be at least 75 to see both incidents, got {seconds}",
                          "seconds", seconds)
    root = Path(directory).resolve()
    shutil.rmtree(root, ignore_errors=True)  # a fresh store each run: the demo's own
    root.mkdir(parents=True)
    config = demo_config(base, root, port, train_time_s)
    started = time.time()

    def step(text: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {text}", flush=True)

    step(f"1/5 ingesting {history_s:g} s of history for {devices} simulated devices into {config.store_uri}")
    history = run_ingest(config, IngestOptions(source="simulated", devices=devices, history_s=history_s,
                                               until_caught_up=True, garbage_rate=0.002, no_score=True))
    totals, reasons = history["totals"], history["reasons"]
    rejected = {k: v for k, v in reasons.items() if not k.startswith("repaired:")}
    repaired = sum(v for k, v in reasons.items() if k.startswith("repaired:"))
    why = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
    step(f"    stored {totals.get('stored', 0):,} samples; repaired {repaired:,} values; rejected "
         f"{totals.get('rejected', 0):,} samples ({why})")

    step(f"2/5 training the LSTM detector on Ray Train (at most {train_time_s:g} s)")
    mv = run_train(config, TrainOptions(from_store=True))
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    mv = registry.promote(mv.name, mv.version, gates=promotion_gates(config, registry))
    loss = mv.metrics.get("best_val_loss", float("nan"))
    step(f"    v{mv.version} {mv.state}: best validation loss {loss:.4f}; "
         f"gate {json.dumps(mv.gate_report, sort_keys=True)}")

    step("3/5 starting the HTTP API on Ray Serve")
    url = run_serve(config, detach=True)["url"]
    step(f"    {url}/docs")

    step(f"4/5 live for {seconds:g} s with incidents: "
         + "; ".join(f"{k} on dev-{i:04d} at +{s} s for {d} s" for k, i, s, d in INCIDENTS))
    live_options = IngestOptions(source="simulated", devices=devices, seconds=seconds,
                                 incident=[f"{kind}:dev-{index:04d}:{start}:{duration}"
                                           for kind, index, start, duration in INCIDENTS])
    asked = [f"dev-{i:04d}" for _, i, _, _ in INCIDENTS] + ["dev-0000"]
    stop = threading.Event()
    answers: list[dict[str, Any]] = []
    poller = threading.Thread(target=_ask_predict, args=(url, asked, stop, answers, step), daemon=True)
    poller.start()
    try:
        live = run_ingest(config, live_options)
    finally:
        stop.set()
        poller.join()
    step(f"    scored {live['scored']:,} samples, {live['anomalies']:,} anomalous")

    step("5/5 report")
    report = _monitor_report(config, time.time() - seconds - 30)
    _print_report(report, open_store(config.store_uri), step)
    from ray import serve

    from serve_app.deployments import APP_NAME

    serve.delete(APP_NAME)
    flagged = {r["device_id"] for r in report.get("anomalies_by_device", [])}
    found = [f"dev-{i:04d}" for _, i, _, _ in INCIDENTS if f"dev-{i:04d}" in flagged]
    if not answers:
        raise PipelineError("the demo's /v1/predict calls all failed; see the log above")
    step(f"done: incidents found on {found or 'no device'}; everything is under {root}")
    return {"history": history, "model_version": mv.version, "live": live, "report": report,
            "predictions": answers, "incident_devices_found": found}


def _ask_predict(url: str, devices: list[str], stop: threading.Event, answers: list[dict[str, Any]],
                 step: Any) -> None:
    while not stop.wait(PREDICT_EVERY_S):
        line = []
        for device in devices:
            request = urllib.request.Request(f"{url}/v1/predict", json.dumps({"device_id": device}).encode(),
                                             {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
            except OSError as exc:  # the demo goes on; a failed call is shown, not fatal
                line.append(f"{device} failed ({exc})")
                continue
            answers.append(answer)
            flag = "ANOMALY " + ",".join(answer["top_features"]) if answer["is_anomaly"] else "normal"
            line.append(f"{device} {answer['anomaly_score']:.2f} {flag}")
        step("    /v1/predict: " + " | ".join(line))


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


def _print_report(report: dict[str, Any], store: Any, step: Any) -> None:
    for row in report.get("anomalies_by_device", [])[:10]:
        events = store.list_events(kind="anomaly", device_id=row["device_id"], limit=1000)
        metrics = sorted({m for e in events for m in e.metrics})
        step(f"    {row['device_id']}: {row['anomalies']} anomalous samples, metrics "
             f"{', '.join(metrics) or '-'}")
    drift = report.get("drift", {})
    worst = sorted((drift.get("per_feature") or {}).items(), key=lambda kv: -kv[1])[:3]
    overall = drift.get("overall")
    overall_text = "not computed yet" if overall is None else f"overall {overall:.3f}"
    step(f"    drift against the production model's training data ({overall_text}): "
         + (", ".join(f"{f} {v:.3f}" for f, v in worst) or "-"))
    latency = report.get("latency", {})
    step(f"    alerts: {json.dumps(report.get('alerts', {}).get('by_kind', {}), sort_keys=True)}; scoring "
         f"latency p50 {latency.get('p50_ms') or 0:.1f} ms, p99 {latency.get('p99_ms') or 0:.1f} ms")


def main(config: EyeNetConfig, options: DemoOptions) -> int:
    result = run_demo(config, directory=options.dir, devices=options.devices, history_s=options.history_s,
                      seconds=options.seconds, port=options.port, train_time_s=options.train_time_s)
    return 0 if result["incident_devices_found"] else EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(job_main(DemoOptions, main, prog="python -m jobs.demo",
                              description=__doc__))
