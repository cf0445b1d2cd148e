"""``eyenet bench train --from-store``: the driver's peak memory preparing ``train
--from-store`` (device by device, :func:`jobs.train_store.prepare_from_store`) beside the
frame path (the whole history read into one frame and :meth:`Detector.prepare`d), at
several store sizes (more devices, the same history per device).

Each (size, path) runs in a fresh subprocess, so no run inherits another's peak. Two
figures per run: ``peak_rss_mb``, ``ru_maxrss`` of the whole process (its floor, about
400 MB, is the imports, torch among them: ``rss_before_mb`` is the resident size just
before preparing), and ``traced_peak_mb``, the peak of what the preparation itself
allocated through Python (numpy and pandas buffers included; tracemalloc), which is the
figure that says whether the history was materialised. SQLite's page cache (bounded by
the store's ``cache_size``) is in the first, not the second. The store is a temporary
SQLite file filled before the subprocess starts.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import EyeNetError
from eyenet.store import open_store

METRICS = ["bytes_in", "bytes_out", "packets_in", "packets_out", "latency"]
INTERVAL_S = 60
WRITE_ROWS = 200_000  # rows per write_samples call while filling


def bench_config(uri: str) -> EyeNetConfig:
    return EyeNetConfig.from_dict({"store_uri": uri, "metrics": METRICS, "counter_metrics": [],
                                   "sample_interval_s": INTERVAL_S})


def fill_store(uri: str, samples: int, samples_per_device: int, seed: int = 0) -> int:
    """Write ``samples`` synthetic gauge samples (daily cycle plus noise, one a minute) for
    ``samples // samples_per_device`` devices; returns the number of devices."""
    rng = np.random.default_rng(seed)
    store = open_store(uri)
    devices = max(1, samples // samples_per_device)
    t = np.arange(samples_per_device)
    stamps = pd.date_range("2026-01-01", periods=samples_per_device, freq=f"{INTERVAL_S}s", tz="UTC")
    batch: list[pd.DataFrame] = []
    for d in range(devices):
        level = rng.uniform(1e5, 1e8)
        cycle = 1 + 0.5 * np.sin(2 * np.pi * t / 1440 + rng.uniform(0, 6.3))
        noise = rng.standard_normal((samples_per_device, 5))
        batch.append(pd.DataFrame({
            "device_id": f"dev-{d:06d}", "timestamp": stamps,
            "bytes_in": level * cycle * (1 + 0.05 * noise[:, 0]),
            "bytes_out": 0.6 * level * cycle * (1 + 0.05 * noise[:, 1]),
            "packets_in": level / 800 * cycle * (1 + 0.05 * noise[:, 2]),
            "packets_out": 0.6 * level / 800 * cycle * (1 + 0.05 * noise[:, 3]),
            "latency": 5 + 0.5 * noise[:, 4]}))
        if sum(map(len, batch)) >= WRITE_ROWS or d == devices - 1:
            store.write_samples(pd.concat(batch, ignore_index=True))
            batch = []
    store.close()
    return devices


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_now_mb() -> float:
    try:  # resident pages now (Linux); the peak above cannot say what the imports left
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):
        return float("nan")


def measure(uri: str, path: str) -> dict[str, Any]:
    """Run one preparation (``by_device`` or ``frame``) in this process; its figures."""
    from jobs.train import flag_incidents
    from jobs.train_store import prepare_from_store

    config = bench_config(uri)
    store = open_store(uri)
    detector = Detector(config.detector, config.metrics, config.gap_s)
    before_mb = _rss_now_mb()
    tracemalloc.start()
    started = time.perf_counter()
    if path == "by_device":
        plan = prepare_from_store(store, detector, config)
        windows = sum(s.train_windows for s in plan.splits)
    elif path == "frame":
        frame = flag_incidents(store.read_range(), store.list_events(kind="anomaly", limit=100_000),
                               tolerance_s=config.sample_interval_s / 2)
        windows = len(detector.prepare(frame).train_targets)
    else:
        raise ValueError(f"path must be 'by_device' or 'frame', got {path!r}")
    seconds = time.perf_counter() - started
    traced_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_mb": round(before_mb, 1),
            "traced_peak_mb": round(traced_peak_mb, 1), "seconds": round(seconds, 2),
            "train_windows": int(windows)}


def _measure_in_subprocess(uri: str, path: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "jobs.bench_train_store", uri, path],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise EyeNetError(f"measuring {path} on {uri} failed (exit {done.returncode}): "
                          f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_store_prep_bench(samples: list[int], samples_per_device: int = 10_000,
                         frame_baseline: bool = True) -> dict[str, Any]:
    """Peak driver RSS of the from-store preparation at each size in ``samples``, the frame
    path's beside it, and the ratios largest size / smallest."""
    out: dict[str, Any] = {"samples_per_device": samples_per_device}
    paths = ["by_device", "frame"] if frame_baseline else ["by_device"]
    with tempfile.TemporaryDirectory(prefix="eyenet-bench-store-") as tmp:
        for n in samples:
            uri = f"sqlite:///{tmp}/store-{n}.db"
            started = time.perf_counter()
            devices = fill_store(uri, n, samples_per_device)
            row: dict[str, Any] = {"devices": devices, "fill_s": round(time.perf_counter() - started, 1)}
            for path in paths:
                figures = _measure_in_subprocess(uri, path)
                row.update({f"{path}_{k}": v for k, v in figures.items()})
            out[f"samples_{n}"] = row
            Path(uri.removeprefix("sqlite:///")).unlink(missing_ok=True)
    low, high = out[f"samples_{min(samples)}"], out[f"samples_{max(samples)}"]
    out["samples_ratio"] = round(max(samples) / min(samples), 2)
    for path in paths:
        for figure in ("peak_rss_mb", "traced_peak_mb"):
            key = f"{path}_{figure}"
            out[f"{key}_ratio"] = round(high[key] / max(low[key], 1e-9), 3)
    return out


if __name__ == "__main__":  # the subprocess of one measurement: URI PATH -> one JSON line
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
