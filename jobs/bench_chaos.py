"""``eyenet bench chaos --minutes M --json``: the live pipeline and the Serve API under steady
load while a seeded schedule breaks one component at a time, then what was lost.

In one run, on a fresh store in a temporary directory:

1. a detector is trained on simulated history and promoted (as ``eyenet bench pipeline``);
2. the pipeline follows the live clock for ``--devices`` simulated devices, with incidents
   injected on trained devices, and the HTTP API runs on Serve with two detector replicas
   (one replica lost must not take the API with it) while ``--clients`` keep-alive clients
   call ``/v1/predict`` and ``/v1/score`` at ``--requests-per-s`` together;
3. every ``--fault-every-s`` the next fault of a shuffled round (seeded) is made: a
   collector actor, a feature actor, a Serve detector replica or the monitor is killed
   (Ray or Serve restarts it), or the SQLite store is held locked by another process for
   ``--store-outage-s``; the time until the component works again is measured (a
   collector polling with its lag back under three intervals, a feature actor scoring, a
   monitor answering, Serve back at its replicas, every collector's pending samples
   written once the store is free);
4. at the end the store is compared with the source key by key (lost and duplicated
   samples), the anomaly events and alerts with the injected incidents (each incident
   found, one event and one alert each; a quiet device that alerted is scored offline on
   its stored telemetry, to tell the model's own false alarms from ones the faults made),
   and the HTTP requests counted by status, apart those in flight on a replica when it
   was killed.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import PipelineError
from eyenet.sources.incidents import Incident
from eyenet.sources.simulator import SimulatedSource
from eyenet.store import open_store
from eyenet.telemetry.validation import TelemetryValidator
from jobs.bench_pipeline import SEED, _generated_vs_stored, _train_and_promote, _wait_caught_up, training_plan
from jobs.chaos_load import HttpLoad, http_figures
from jobs.demo_scoring import score_demo, span_of_event, truths_from
from jobs.options import ChaosBenchOptions, job_main, print_result

FAULTS = ("collector", "feature_actor", "serve_replica", "monitor", "store")
INCIDENT_KINDS = ("ddos_burst", "latency_spike", "link_down")
INCIDENT_S = 30            # each incident lasts this long; they start one per fault period
RECOVERY_TIMEOUT_S = 120.0
DETECTOR_REPLICAS = 2
LOCK_SCRIPT = ("import sqlite3, sys, time\n"
               "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
               "db.execute('BEGIN EXCLUSIVE')\n"
               "print('locked', flush=True)\n"
               "time.sleep(float(sys.argv[2]))\n"
               "db.execute('ROLLBACK')\n")


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float                              # since the soak started
    outage_s: float = 0.0                    # the store's: how long it was held locked
    recovered_after_s: float | None = None   # from the kill, or from the store's release


def _wait(what: str, check: Any, timeout_s: float = RECOVERY_TIMEOUT_S) -> float | None:
    """Seconds until ``check()`` is true (its errors count as not yet), or None at the timeout."""
    started = time.time()
    while time.time() - started < timeout_s:
        try:
            if check():
                return time.time() - started
        except Exception:  # a restarting actor's calls fail or time out until it is back
            pass
        time.sleep(0.2)
    return None


def _detector_replicas() -> list[str]:
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    from serve_app.deployments import APP_NAME

    prefix = f"SERVE_REPLICA::{APP_NAME}#Detector#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(prefix))


def _serve_at_full_strength(killed: str) -> bool:
    from ray import serve

    from serve_app.deployments import APP_NAME

    replicas = _detector_replicas()
    deployment = serve.status().applications[APP_NAME].deployments["Detector"]
    return (killed not in replicas and len(replicas) == DETECTOR_REPLICAS
            and deployment.replica_states.get("RUNNING", 0) == DETECTOR_REPLICAS)


class Chaos:
    """The faults, made one at a time on the running pipeline and API."""

    def __init__(self, pipeline: Any, monitor: Any, db_path: str, interval_s: float, outage_s: float,
                 seed: int) -> None:
        self.pipeline, self.monitor, self.db_path = pipeline, monitor, db_path
        self.interval_s, self.outage_s = interval_s, outage_s
        self.rng = random.Random(seed)
        self.faults: list[Fault] = []
        self._round: list[str] = []

    def next_kind(self) -> str:
        if not self._round:
            self._round = self.rng.sample(FAULTS, len(FAULTS))
        return self._round.pop()

    def make(self, kind: str, at_s: float) -> Fault:
        fault = getattr(self, f"_{kind}")(at_s)
        self.faults.append(fault)
        return fault

    def _actor(self, kind: str, handles: list[Any], at_s: float, ready: Any) -> Fault:
        import ray

        index = self.rng.randrange(len(handles))
        handle = handles[index]
        pid = ray.get(handle.stats.remote(), timeout=60)["pid"]
        fault = Fault(kind, f"{kind} {index}", at_s)
        ray.kill(handle, no_restart=False)   # Ray restarts it, as it would after a crash
        fault.recovered_after_s = _wait(kind, lambda: ready(ray.get(handle.stats.remote(), timeout=5), pid))
        return fault

    def _collector(self, at_s: float) -> Fault:
        lag_ok = 3 * self.pipeline.config.sample_interval_s
        return self._actor("collector", self.pipeline.collectors, at_s,
                           lambda s, pid: s["pid"] != pid and s["running"] and s["lag_s"] <= lag_ok)

    def _feature_actor(self, at_s: float) -> Fault:
        return self._actor("feature_actor", self.pipeline.feature_actors, at_s,
                           lambda s, pid: s["pid"] != pid and s["totals"].get("samples", 0) > 0)

    def _monitor(self, at_s: float) -> Fault:
        return self._actor("monitor", [self.monitor], at_s, lambda s, pid: s["pid"] != pid)

    def _serve_replica(self, at_s: float) -> Fault:
        import ray
        from ray.serve._private.constants import SERVE_NAMESPACE

        name = self.rng.choice(_detector_replicas())
        fault = Fault("serve_replica", name.split("#")[-1], at_s)
        ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)  # Serve replaces it
        fault.recovered_after_s = _wait("serve_replica", lambda: _serve_at_full_strength(name))
        return fault

    def _store(self, at_s: float) -> Fault:
        """Another process holds the SQLite file locked: every write waits, then fails."""
        import ray

        holder = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, self.db_path, str(self.outage_s)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "locked":
            holder.kill()
            raise PipelineError(f"could not lock {self.db_path} for the store outage")
        locked_s = time.time()
        holder.wait(self.outage_s + 60)
        fault = Fault("store", Path(self.db_path).name, at_s, outage_s=round(time.time() - locked_s, 1))

        def written() -> bool:
            stats = ray.get([c.stats.remote() for c in self.pipeline.collectors], timeout=5)
            return all(s["pending_samples"] == 0 and s["lag_s"] <= 3 * self.pipeline.config.sample_interval_s
                       for s in stats)

        fault.recovered_after_s = _wait("store", written)
        return fault


def _chaos_config(config: EyeNetConfig, tmp: str, devices: int, port: int) -> EyeNetConfig:
    data = config.to_dict()
    streaming = {**data["streaming"], "devices_per_actor": max(1, -(-devices // 4))}
    serve = {**data["serve"], "host": "127.0.0.1", "port": port, "min_replicas": DETECTOR_REPLICAS,
             "max_replicas": DETECTOR_REPLICAS, "replica_cpus": 0.0}
    return EyeNetConfig.from_dict({**data, "store_uri": f"sqlite:///{tmp}/chaos.db",
                                   "artifact_root": f"{tmp}/artifacts", "streaming": streaming,
                                   "serve": serve})


def _incidents(config: EyeNetConfig, trained: int, origin_ms: int, seconds: float,
               every_s: float) -> list[Incident]:
    """One incident per fault period on a trained device (the others are learning, never
    alerting), so faults land before, during and after them."""
    count = max(1, int((seconds - INCIDENT_S - 10) // every_s))
    devices = SimulatedSource(config, devices=trained, seed=SEED).devices()
    stride = max(1, len(devices) // count)
    starts_ms = [origin_ms + int((5 + k * every_s) * 1000) for k in range(count)]
    return [Incident(devices[(k * stride) % len(devices)], INCIDENT_KINDS[k % len(INCIDENT_KINDS)],
                     start_ms, start_ms + INCIDENT_S * 1000) for k, start_ms in enumerate(starts_ms)]


def _score_body(config: EyeNetConfig, device: str) -> dict[str, Any]:
    source = SimulatedSource(config, devices=[device], seed=SEED + 1)
    end_ms = int(time.time() * 1000) - 3_600_000
    rows = config.detector.window_steps + 1 + config.detector.smoothing
    # twice the rows: a counter's first sample has no rate yet (NaN, which the API refuses)
    raw = source.fetch([device], end_ms - int(2 * rows * config.sample_interval_s * 1000), end_ms).samples
    frame = TelemetryValidator(config).validate(raw).accepted.dropna(subset=config.metrics).tail(rows)
    return {"windows": [{"device_id": device, "timestamps": [t.isoformat() for t in frame["timestamp"]],
                         "values": frame[config.metrics].to_numpy().tolist()}]}


def _alerting_without_the_model(config: EyeNetConfig, store: Any, devices: list[str]) -> list[str]:
    """Of quiet ``devices`` that alerted, those the production model does not flag when it
    scores their stored telemetry offline (``anomaly_min_points`` points or more): alerts the
    faults made. The others' alerts are the model's own (the soak's detector trains briefly)."""
    from actors.features import load_production

    if not devices:
        return []
    detector, _ = load_production(config)
    scored = detector.score(store.read_range(None, None, device_ids=devices))
    flagged = scored.groupby("device_id")["is_anomaly"].sum()
    return sorted(d for d in devices if flagged.get(d, 0) < config.alerts.anomaly_min_points)


def run_chaos(config: EyeNetConfig, minutes: float = 10.0, devices: int = 1000, clients: int = 8,
              requests_per_s: float = 20.0, fault_every_s: float = 30.0, store_outage_s: float = 10.0,
              seed: int = 0, faults: int | None = None) -> dict[str, Any]:
    """The soak (see the module); ``faults``: exactly that many, the soak lasting until the
    last has recovered if that takes longer than ``minutes`` (a slow recovery delays the
    next fault, so a time-boxed schedule may make fewer than it could)."""
    import ray
    from ray import serve

    from actors.monitor import find_monitor, get_monitor
    from actors.pipeline import start_pipeline
    from jobs._ray import ensure_ray, free_port
    from serve_app.deployments import APP_NAME, build_app

    seconds = minutes * 60.0
    tmp = tempfile.mkdtemp(prefix="eyenet-bench-chaos-")
    config = _chaos_config(config, tmp, devices, free_port())
    ensure_ray()
    if find_monitor() is not None:
        raise PipelineError("a monitor already runs on this Ray cluster (another pipeline's): the chaos "
                            "soak kills its monitor, so run it on a cluster of its own")
    now_ms = int(time.time() * 1000)
    _train_and_promote(config, devices, now_ms)
    trained, _ = training_plan(config, devices)
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    monitor = get_monitor(config)
    warmup_s = (config.detector.window_steps + 2) * config.sample_interval_s
    origin_s = time.time()
    incidents = _incidents(config, trained, int(origin_s * 1000), seconds, fault_every_s)
    options = {"devices": devices, "seed": SEED, "origin_wall_s": origin_s, "start_ms": int(origin_s * 1000),
               "incidents": [i.to_dict() for i in incidents]}
    pipeline = start_pipeline(config, "simulated", options, start_ms=int((origin_s - warmup_s) * 1000))
    fleet = SimulatedSource(config, devices=devices, seed=SEED).devices()
    load = HttpLoad(f"http://{config.serve.host}:{config.serve.port}", fleet[:trained],
                    _score_body(config, fleet[0]), clients, requests_per_s)
    chaos = Chaos(pipeline, monitor, f"{tmp}/chaos.db", config.sample_interval_s, store_outage_s, seed)
    try:
        caught_up = _wait_caught_up(pipeline, int(origin_s * 1000))
        load.start()
        soak_started = time.time()
        def more() -> bool:
            if faults is not None:
                return len(chaos.faults) < faults
            return time.time() - soak_started + fault_every_s < seconds

        while more():
            time.sleep(max(0.0, soak_started + (len(chaos.faults) + 1) * fault_every_s - time.time()))
            chaos.make(chaos.next_kind(), round(time.time() - soak_started, 1))
        time.sleep(max(0.0, soak_started + seconds - time.time()))
        load.stop()
        final = pipeline.stop()
        elapsed_s = time.time() - soak_started
        store = open_store(config.store_uri)
        spans = {}
        for i in range(len(pipeline.groups)):
            state = store.get_state(f"collector/simulated-{i}") or {"devices": []}
            spans.update({d["device_id"]: (int((origin_s - warmup_s) * 1000), d["cursor_ms"])
                          for d in state["devices"]})
        counts = _generated_vs_stored(config, store, spans)
        source = SimulatedSource(config, **options)
        truths = truths_from(source.incidents_between(int(origin_s * 1000) - 1, int(time.time() * 1000)))
        now_ms = int(time.time() * 1000)
        events = store.list_events(since=origin_s - 60, limit=100_000)
        detection = score_demo(truths, [s for s in (span_of_event(e, now_ms) for e in events) if s], fleet)
        unexplained = _alerting_without_the_model(config, store, detection["quiet_devices_alerting"])
    finally:
        load.stop()
        serve.delete(APP_NAME)
        serve.shutdown()
        monitor = find_monitor()
        if monitor is not None:   # it writes to this run's store, which goes with the run
            ray.kill(monitor, no_restart=True)
    recovered = [f.recovered_after_s for f in chaos.faults]
    return {
        "devices": devices, "trained_devices": trained, "seconds": round(elapsed_s, 1),
        "warmup_caught_up": caught_up, "fault_every_s": fault_every_s,
        "faults": [asdict(f) for f in chaos.faults],
        "faults_by_kind": {k: sum(f.kind == k for f in chaos.faults) for k in FAULTS},
        "faults_not_recovered": sum(r is None for r in recovered),
        "max_recovery_s": max((round(r, 1) for r in recovered if r is not None), default=None),
        "samples_generated": counts["generated"], "samples_stored": counts["stored"],
        "samples_lost": counts["lost"], "samples_duplicated": counts["duplicated"],
        "rejected": sum(c["totals"].get("rejected", 0) for c in final["collectors"]),
        "incidents": detection["incidents"], "incidents_found": detection["incidents_found"],
        "per_incident": [{k: r[k] for k in ("device_id", "kind", "found", "events", "alerts")}
                         for r in detection["per_incident"]],
        "false_alerts_on_quiet_devices": detection["false_alerts_on_quiet_devices"],
        "false_alerts": detection["false_alerts"],
        "quiet_devices_alerting": detection["quiet_devices_alerting"],
        "quiet_devices_alerting_not_flagged_offline": unexplained,
        **http_figures(load.requests, chaos.faults, soak_started), "store": config.store_uri,
    }


def main(config: EyeNetConfig, options: ChaosBenchOptions) -> int:
    result = run_chaos(config, minutes=options.minutes, devices=options.devices, clients=options.clients,
                       requests_per_s=options.requests_per_s, fault_every_s=options.fault_every_s,
                       store_outage_s=options.store_outage_s, seed=options.seed, faults=options.faults)
    print_result(result, options.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ChaosBenchOptions, main, prog="python -m jobs.bench_chaos",
                              description=__doc__))
