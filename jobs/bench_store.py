"""Store benchmark behind ``eyenet bench store --json``: batched writes and last-window reads.

Design, and why:

* **Pre-built batches.** Every batch DataFrame is generated (vectorised numpy, no per-sample
  Python) before the clock starts, so the write figure is the store's cost alone: what
  ``write_samples`` spends converting a frame and inserting it, not what the benchmark
  spends inventing data. Batches are consecutive timestamps across many devices, in time
  order, which is how a collector fleet writes.
* **Bare baseline in the same run.** Absolute samples/s depend on the disk, the CPU and
  the SQLite build, so a number alone says little. A plain ``sqlite3.executemany`` into a
  table with the same key, pragmas and one transaction per batch, timed in the same process
  on the same machine, gives ``write_ratio_vs_bare``: the share of SQLite's own speed that
  EyeNet keeps, comparable across machines.
* **Reads are checked.** Each ``last_window`` must return a non-empty window of at most
  ``window_s`` samples; a wrong size raises, so no figure is ever reported from broken reads.
"""

from __future__ import annotations

import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import DEFAULT_METRICS, EyeNetConfig
from eyenet.store import open_store
from eyenet.store.sqlite import CACHE_KIB, WAL_CHECKPOINT_PAGES
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP
from jobs.options import StoreBenchOptions, job_main, print_result

TARGETS = {"write_samples_per_s": 100_000, "last_window_ms_median": 5.0}
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def make_batches(devices: int, samples: int, batch_size: int, seed: int) -> list[pd.DataFrame]:
    """``samples`` samples, one per second per device, as time-ordered batch frames.

    Sample ``i`` is device ``i % devices`` at second ``i // devices``. Counter metrics are
    per-second rates (as the validator stores them) around a per-device base with noise;
    about 0.1% of values are missing and about 1% of labels are 1.
    """
    rng = np.random.default_rng(seed)
    names = np.array([f"dev-{d:05d}" for d in range(devices)], dtype=object)
    idx = np.arange(samples, dtype=np.int64)
    dev, sec = idx % devices, idx // devices
    base = rng.lognormal(mean=12.0, sigma=1.5, size=(devices, 2))  # bytes/s in, out
    noise = rng.lognormal(mean=0.0, sigma=0.3, size=(samples, 4))
    bytes_in = base[dev, 0] * noise[:, 0]
    bytes_out = base[dev, 1] * noise[:, 1]
    values = {
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "packets_in": bytes_in / rng.uniform(200, 1400, devices)[dev] * noise[:, 2],
        "packets_out": bytes_out / rng.uniform(200, 1400, devices)[dev] * noise[:, 3],
        "latency": rng.gamma(shape=2.0, scale=rng.uniform(2, 40, devices)[dev] / 2.0),
    }
    for m in DEFAULT_METRICS:
        values[m] = np.where(rng.random(samples) < 0.001, np.nan, values[m])
    label = (rng.random(samples) < 0.01).astype(np.int8)
    ts = pd.to_datetime(START_MS + sec * 1000, unit="ms", utc=True)
    batches = []
    for lo in range(0, samples, batch_size):
        hi = min(lo + batch_size, samples)
        frame = pd.DataFrame({DEVICE: names[dev[lo:hi]], TIMESTAMP: ts[lo:hi]})
        for m in DEFAULT_METRICS:
            frame[m] = values[m][lo:hi]
        frame[LABEL] = label[lo:hi]
        batches.append(frame)
    return batches


def bare_rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """A batch as the tuples a bare executemany takes (NaN as NULL, ms timestamps)."""
    ts_ms = frame[TIMESTAMP].dt.as_unit("ms").astype("int64").tolist()
    cols: list[list[Any]] = [frame[DEVICE].tolist(), ts_ms, frame[LABEL].astype(int).tolist()]
    for m in DEFAULT_METRICS:
        v = frame[m].to_numpy(dtype="float64")
        col = v.astype(object)
        col[np.isnan(v)] = None
        cols.append(col.tolist())
    return list(zip(*cols, strict=True))


def bare_sqlite_write(path: Path, rows: list[list[tuple[Any, ...]]]) -> float:
    """Seconds for plain executemany of the batches: same key, pragmas, txn per batch."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    metric_defs = ", ".join(f"{m} REAL" for m in DEFAULT_METRICS)
    conn.execute(f"CREATE TABLE t (device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, "
                 f"label INTEGER, {metric_defs}, PRIMARY KEY (device_id, ts_ms)) WITHOUT ROWID")
    sql = f"INSERT OR IGNORE INTO t VALUES ({', '.join('?' * (3 + len(DEFAULT_METRICS)))})"
    t0 = time.perf_counter()
    for batch in rows:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    n = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
    conn.close()
    if n != sum(len(b) for b in rows):
        raise RuntimeError(f"bare baseline stored {n} rows, expected {sum(len(b) for b in rows)}")
    return elapsed


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 3)


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 3)


def run_store_bench(uri: str | None = None, devices: int = 1000, samples: int = 1_000_000,
                    batch_size: int = 1000, window_s: float = 300.0, reads: int = 200,
                    seed: int = 0) -> dict[str, Any]:
    """Run the benchmark on a fresh store (a temporary SQLite file unless ``uri`` is given;
    a given store must be empty) and return the figures as a JSON-able dict."""
    if min(devices, samples, batch_size, reads) < 1 or not window_s > 0:
        raise ValueError("devices, samples, batch_size and reads must be >= 1, window_s > 0")
    batches = make_batches(devices, samples, batch_size, seed)
    with tempfile.TemporaryDirectory(prefix="eyenet-bench-") as tmp:
        store_uri = uri or f"sqlite:///{Path(tmp) / 'store.db'}"
        backend = "sqlite" if store_uri.startswith("sqlite:///") else store_uri.split(":", 1)[0]
        store = open_store(store_uri)
        try:
            batch_s, inserted = [], 0
            t0 = time.perf_counter()
            for frame in batches:
                t = time.perf_counter()
                inserted += store.write_samples(frame).inserted
                batch_s.append(time.perf_counter() - t)
            write_s = time.perf_counter() - t0
            if inserted != samples:
                raise RuntimeError(f"store inserted {inserted} of {samples} samples")
            rng = np.random.default_rng(seed + 1)
            names = [f"dev-{d:05d}" for d in rng.integers(0, min(devices, samples), reads)]
            read_s, sizes = [], []
            for name in names:
                t = time.perf_counter()
                window = store.last_window(name, window_s)
                read_s.append(time.perf_counter() - t)
                if not 0 < len(window) <= window_s:
                    raise RuntimeError(f"last_window({name!r}, {window_s}) returned "
                                       f"{len(window)} samples; expected 1..{int(window_s)}")
                sizes.append(len(window))
            stored = store.count_samples()
            if stored != samples:
                raise RuntimeError(f"store holds {stored} samples after the run, expected {samples}")
        finally:
            store.close()
        bare_rate = None
        if backend == "sqlite":
            rows = [bare_rows(frame) for frame in batches]
            with tempfile.TemporaryDirectory(prefix="eyenet-bench-bare-") as bare_tmp:
                bare_rate = samples / bare_sqlite_write(Path(bare_tmp) / "bare.db", rows)
    write_rate = samples / write_s
    return {
        "bench": "store", "backend": backend, "devices": devices, "samples": samples,
        "batch_size": batch_size,
        "write_samples_per_s": round(write_rate),
        "write_batch_ms_p50": _ms(batch_s, 50), "write_batch_ms_p99": _ms(batch_s, 99),
        "bare_sqlite_write_samples_per_s": None if bare_rate is None else round(bare_rate),
        "write_ratio_vs_bare": None if bare_rate is None else round(write_rate / bare_rate, 3),
        "last_window_s": _num(window_s),
        "reads": reads,
        "last_window_ms_median": _ms(read_s, 50), "last_window_ms_p99": _ms(read_s, 99),
        "window_rows_median": _num(statistics.median(sizes)),
        "targets": dict(TARGETS),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def main(config: EyeNetConfig, options: StoreBenchOptions) -> int:
    print_result(run_store_bench(uri=options.uri, devices=options.devices, samples=options.samples,
                                 batch_size=options.batch_size, reads=options.reads), options.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(StoreBenchOptions, main, prog="python -m jobs.bench_store",
                              description=__doc__))
