"""``eyenet bench pipeline --devices N --seconds S --json``: the live path, measured.

In one run, on a fresh store in a temporary directory:

1. trains a detector in-process on simulated history of a sample of the fleet, registers
   and promotes it (the pipeline scores with the production model, as in service);
2. runs the pipeline live (simulated fleet, one sample per device per interval) for S
   seconds, sampling the resident memory of every Ray process and the driver each second;
3. compares what the collectors stored with what the source generated over the same span,
   key by key: lost and duplicated samples must both be 0;
4. bulk-scores stored history through the feature pool, beside the same frame scored by
   one in-process detector (the pool's speed-up is the ratio).

Sample-to-score latency is the scored time minus the sample's own timestamp (the
simulated devices stamp samples with the live clock), so it includes waiting for the
next poll: with a 1 s interval, about 0.5 s on average.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.models.registry import ModelRegistry
from eyenet.sources.simulator import SimulatedSource
from eyenet.store import open_store
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, to_ms
from eyenet.telemetry.validation import TelemetryValidator
from jobs.options import PipelineBenchOptions, job_main, print_result

# The model trains on at most TRAIN_DEVICE_SAMPLES samples: every device's history for a
# small fleet, a sample of the devices for a large one (the others are scored as devices
# the model never saw, as in service), each with enough history that its held-out tail
# holds validation windows.
TRAIN_DEVICE_SAMPLES = 300_000
TRAIN_HISTORY_S = 1800
VALIDATION_WINDOWS_PER_DEVICE = 3
TRAIN_TIME_S = 30.0
BULK_DEVICES = 100
BENCH_DEVICES_PER_ACTOR = 250
SEED = 7


def _ray_processes() -> list[Any]:
    """Every Ray process on this machine plus this driver (the pipeline's whole cost)."""
    import os

    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] == os.getpid() or "ray" in (proc.info["name"] or "") or "ray::" in cmd \
                or "/ray/" in cmd or "default_worker.py" in cmd:
            found.append(proc)
    return found


def _ray_memory_bytes() -> int:
    """Proportional set size (PSS) of every Ray process on this machine plus this driver.

    PSS, not RSS: Ray's object store is shared memory mapped into every worker that
    touches it, and summing RSS would count those pages once per process."""
    import psutil

    total = 0
    for proc in _ray_processes():
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
            continue
    return total


def _ray_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) each Ray process has used so far, by pid: the measured
    period's CPU is the difference, per sample the unit a cluster is sized in."""
    import psutil

    used = {}
    for proc in _ray_processes():
        try:
            times = proc.cpu_times()
            used[proc.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return used


def cpu_used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two :func:`_ray_cpu_s` readings (a process started in
    between counts from zero; one gone by the second reading is not counted)."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


class _MemorySampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _ray_memory_bytes())
            self.stop.wait(2.0)


def training_plan(config: EyeNetConfig, devices: int) -> tuple[int, int]:
    """(devices trained on, samples of history each). Each device's held-out tail
    (``validation_fraction``) holds VALIDATION_WINDOWS_PER_DEVICE windows; the fleet's
    share within TRAIN_DEVICE_SAMPLES. (Shrinking every device's history as the fleet
    grew left 3,000 devices 120 samples each: 24 held out, no validation window of 30.)"""
    det = config.detector
    least = math.ceil(VALIDATION_WINDOWS_PER_DEVICE * (det.window_steps + 1) / det.validation_fraction)
    wanted = max(least, min(int(TRAIN_HISTORY_S / config.sample_interval_s), TRAIN_DEVICE_SAMPLES // devices))
    return min(devices, max(1, TRAIN_DEVICE_SAMPLES // wanted)), wanted


def _train_and_promote(config: EyeNetConfig, devices: int, now_ms: int) -> tuple[int, int]:
    source = SimulatedSource(config, devices=devices, seed=SEED)
    trained, rows = training_plan(config, devices)
    history_ms = int(rows * config.sample_interval_s * 1000)
    start_ms = now_ms - history_ms - 600_000
    raw = source.fetch(source.devices()[:trained], start_ms, start_ms + history_ms).samples
    history = TelemetryValidator(config).validate(raw).accepted
    detector = Detector(config.detector, config.metrics, config.gap_s).fit(history)
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    with tempfile.TemporaryDirectory() as tmp:
        mv = registry.register(detector.save(Path(tmp) / "model"), metrics={"bench": 1})
    registry.promote(mv.name, mv.version)
    return mv.version, trained


def _generated_vs_stored(config: EyeNetConfig, store: Any,
                         spans: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Key-by-key comparison of the source's samples with the store's over each device's span."""
    source = SimulatedSource(config, devices=len(spans), seed=SEED)
    generated = stored = lost = extra = 0
    for device, (since, until) in spans.items():
        want = set(to_ms(pd.to_datetime(source.fetch([device], since, until).samples[TIMESTAMP], utc=True)))
        frame = store.read_range(pd.Timestamp(since + 1, unit="ms", tz="UTC"),
                                 pd.Timestamp(until + 1, unit="ms", tz="UTC"), [device])
        have = to_ms(frame[TIMESTAMP]).tolist()
        generated += len(want)
        stored += len(have)
        lost += len(want - set(have))
        extra += len(have) - len(set(have)) + len(set(have) - want)
    return {"generated": generated, "stored": stored, "lost": lost, "duplicated": extra}


def warmed_up(stats: dict[str, Any], until_ms: int) -> bool:
    """Whether ``stats`` (the pipeline's, collectors read before scorers) show the warm-up
    backlog fetched up to ``until_ms`` by every collector, stored and scored. A lag of a
    couple of intervals is not enough: at a 10 s interval the tick or two still unfetched
    was scored after the figures were reset, at an age of 11 s, and as one tick of twelve
    measured it set the p99 (10,000 devices at 10 s read 11 s instead of about 1)."""
    return bool(stats["collectors"]) and \
        all(c["oldest_cursor_ms"] >= until_ms and c["totals"].get("stored")
            for c in stats["collectors"]) and stats["scored"] >= stats["stored"]


def _wait_caught_up(pipeline: Any, until_ms: int, timeout_s: float = 300.0) -> bool:
    """Whether the pipeline scored its warm-up backlog (everything before ``until_ms``)
    within ``timeout_s``. A fleet too large for the machine never does; the bench then
    measures it anyway (its lag and latency say how far behind it falls) instead of failing."""
    from ray.exceptions import GetTimeoutError

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            stats = pipeline.stats(timeout_s=30.0)
        except GetTimeoutError:   # dozens of actor processes still starting on two cores
            continue
        if warmed_up(stats, until_ms):
            return True
        time.sleep(0.5)
    return False


def run_pipeline_bench(config: EyeNetConfig, devices: int = 1000, seconds: float = 60.0,
                       devices_per_actor: int | None = None,
                       feature_actors: int | None = None) -> dict[str, Any]:
    import ray

    from actors.pipeline import start_pipeline
    from jobs._ray import ensure_ray

    tmp = tempfile.mkdtemp(prefix="eyenet-bench-pipeline-")
    streaming = config.streaming.model_dump()
    # a collector process costs ~170 MB before it holds a device: 250 devices share one
    streaming["devices_per_actor"] = devices_per_actor or BENCH_DEVICES_PER_ACTOR
    if feature_actors:
        streaming["feature_actors"] = feature_actors
    detector = {**config.detector.model_dump(), "max_train_time_s": TRAIN_TIME_S}
    config = EyeNetConfig.from_dict({**config.to_dict(), "store_uri": f"sqlite:///{tmp}/bench.db",
                                     "artifact_root": f"{tmp}/artifacts", "streaming": streaming,
                                     "detector": detector})
    now_ms = int(time.time() * 1000)
    version, trained_devices = _train_and_promote(config, devices, now_ms)
    ensure_ray()
    sampler = _MemorySampler()
    sampler.start()
    # Warm-up: cursors start one window back, so every device has a full window when the
    # measured period begins; figures are reset once that backlog is scored.
    warmup_s = (config.detector.window_steps + 2) * config.sample_interval_s
    origin_s = time.time()
    # the fleet's clock is the wall clock (start_ms = origin), so a sample's age is its latency
    options = {"devices": devices, "seed": SEED, "origin_wall_s": origin_s, "start_ms": int(origin_s * 1000)}
    pipeline = start_pipeline(config, "simulated", options, start_ms=int((origin_s - warmup_s) * 1000))
    warmup_caught_up = _wait_caught_up(pipeline, int(origin_s * 1000))
    ray.get([f.reset_stats.remote() for f in pipeline.feature_actors])
    measured_from_s = time.time()
    stored_before = pipeline.stats()["stored"]
    cpu_before = _ray_cpu_s()
    time.sleep(seconds)  # the pipeline runs on its own; this process only measures
    cpu_s = cpu_used_s(cpu_before, _ray_cpu_s())
    cpu_elapsed_s = time.time() - measured_from_s
    at_end = pipeline.stats(timeout_s=120.0)
    lag_s = max(c["lag_s"] for c in at_end["collectors"])
    stored_in_cpu_period = at_end["stored"] - stored_before
    final = pipeline.stop(keep_scorers=True)
    elapsed_s = time.time() - measured_from_s
    sampler.stop.set()
    sampler.join()
    store = open_store(config.store_uri)
    spans = {}
    start_ms = int((origin_s - warmup_s) * 1000)
    for i in range(len(pipeline.groups)):
        state = store.get_state(f"collector/simulated-{i}") or {"devices": []}
        spans.update({d["device_id"]: (start_ms, d["cursor_ms"]) for d in state["devices"]})
    counts = _generated_vs_stored(config, store, spans)
    scorers = final["feature_actors"]
    ages = [s["sample_age_ms"] for s in scorers]
    polls = [s["poll_to_score_ms"] for s in scorers]
    scored = sum(s["totals"].get("windows", 0) for s in scorers)
    stored_in_period = sum(c["totals"].get("stored", 0) for c in final["collectors"]) - stored_before

    bulk = _bulk_scoring(config, pipeline, store, version)
    for handle in pipeline.feature_actors:
        ray.kill(handle)
    return {
        "devices": devices, "trained_devices": trained_devices, "seconds": round(elapsed_s, 1),
        "warmup_caught_up": warmup_caught_up, "collector_lag_s_at_end": round(lag_s, 1),
        "interval_s": config.sample_interval_s,
        "collector_actors": len(pipeline.collectors), "feature_actors": len(pipeline.feature_actors),
        "samples_per_s_ingested": round(stored_in_period / elapsed_s, 1),
        "windows_per_s_scored": round(scored / elapsed_s, 1),
        "sample_to_score_ms_p50": max(a.get("p50_ms") or float("nan") for a in ages),
        "sample_to_score_ms_p99": max(a.get("p99_ms") or float("nan") for a in ages),
        "poll_to_score_ms_p50": max(p.get("p50_ms") or float("nan") for p in polls),
        "poll_to_score_ms_p99": max(p.get("p99_ms") or float("nan") for p in polls),
        "peak_memory_gb_pss": round(sampler.peak / 2**30, 2),
        "memory_mb_pss_per_device": round(sampler.peak / 2**20 / devices, 3),
        # every Ray process, this driver included: ingest, validation, store, scoring, Ray
        "cpu_cores_busy": round(cpu_s / cpu_elapsed_s, 2),
        "cpu_ms_per_sample": round(1000.0 * cpu_s / max(stored_in_cpu_period, 1), 3),
        "samples_generated": counts["generated"], "samples_stored": counts["stored"],
        "samples_lost": counts["lost"], "samples_duplicated": counts["duplicated"],
        "rejected": sum(c["totals"].get("rejected", 0) for c in final["collectors"]),
        "anomalies": sum(s["totals"].get("anomalies", 0) for s in scorers),
        **bulk, "store": config.store_uri,
    }


def _bulk_scoring(config: EyeNetConfig, pipeline: Any, store: Any, version: int) -> dict[str, Any]:
    """Windows/s through the pool beside one in-process detector on the same frame."""
    source = SimulatedSource(config, devices=BULK_DEVICES, seed=SEED + 1)
    end_ms = int(time.time() * 1000) - 3_600_000
    raw = source.fetch(source.devices(), end_ms - 600_000, end_ms).samples
    frame = TelemetryValidator(config).validate(raw).accepted
    started = time.perf_counter()
    results = pipeline.score_frame(frame)
    pool_s = time.perf_counter() - started
    windows = sum(r["windows"] for r in results)
    from actors.features import load_production

    detector, _ = load_production(config, version=version)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    local = detector.score(frame)
    local_s = time.perf_counter() - started
    local_windows = int(local["raw_score"].notna().sum())
    return {"bulk_windows": windows, "bulk_windows_per_s_pool": round(windows / pool_s, 1),
            "bulk_windows_per_s_one_process": round(local_windows / local_s, 1),
            "bulk_pool_vs_one_process": round((windows / pool_s) / (local_windows / local_s), 2),
            "bulk_frame_rows": len(frame), "bulk_devices": int(frame[DEVICE].nunique())}


def main(config: EyeNetConfig, options: PipelineBenchOptions) -> int:
    print_result(run_pipeline_bench(config, devices=options.devices, seconds=options.seconds,
                                    devices_per_actor=options.devices_per_actor,
                                    feature_actors=options.feature_actors), options.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(PipelineBenchOptions, main, prog="python -m jobs.bench_pipeline",
                              description=__doc__))
