"""Test helpers, importable by worker processes (spawned children import this module)."""

from __future__ import annotations

import os
import signal
import socket
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.store import open_store

METRICS = ["bytes_in", "bytes_out", "packets_in", "packets_out", "latency"]


def samples(device_ids: list[str], start_s: int, n_per_device: int, seed: int = 0,
            step_s: float = 1.0) -> pd.DataFrame:
    """A deterministic frame whose values depend only on (device, time, seed), so two
    writers that overlap write identical samples."""
    parts = []
    for device in device_ids:
        rng = np.random.default_rng([seed, zlib.crc32(device.encode())])
        part = pd.DataFrame({
            "device_id": device,
            "timestamp": pd.to_datetime(start_s + np.arange(n_per_device) * step_s, unit="s", utc=True),
        })
        for m in METRICS:
            part[m] = rng.uniform(0, 1000, n_per_device).round(3)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    frame["label"] = pd.array([None] * len(frame), dtype="Int8")
    return frame


def write_overlapping(uri: str, worker: int, n_batches: int, batch_devices: int) -> int:
    """One of several writers: batch b covers devices of window b and b+1 (overlap)."""
    store = open_store(uri)
    try:
        return write_overlapping_on(store, worker, n_batches, batch_devices)
    finally:
        store.close()


def write_until_killed(uri: str, acks: Any, batch_rows: int) -> None:
    """Write distinct batches forever, acknowledging each one after it returns."""
    store = open_store(uri)
    b = 0
    while True:
        frame = samples([f"kill-{b:05d}"], 1_700_000_000, batch_rows, seed=b)
        store.write_samples(frame)
        acks.send(b)
        b += 1


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def write_overlapping_on(store: Any, worker: int, n_batches: int, batch_devices: int) -> int:
    """``write_overlapping`` on an already open store (threads share one in-memory backend)."""
    total = 0
    for b in range(n_batches):
        start = (b + worker) % n_batches
        devices = [f"dev-{(start + i) % (n_batches + 1):03d}" for i in range(batch_devices)]
        total += store.write_samples(samples(devices, 1_700_000_000, 50, seed=0)).inserted
    return total


class WriterKilled(BaseException):
    """Stands in for the death of a process that cannot really be killed (in-memory store)."""


def write_until_interrupted(store: Any, batch_rows: int, interrupt_at_batch: int) -> list[int]:
    """Write distinct batches; batch ``interrupt_at_batch`` dies half-way through the insert."""
    collection = store.metrics_c
    real_insert = collection.insert_many

    def dying_insert(docs: list[dict[str, Any]], ordered: bool = True, **kw: Any) -> None:
        real_insert(docs[: len(docs) // 2], ordered=ordered, **kw)
        raise WriterKilled()

    acked = []
    for b in range(interrupt_at_batch + 1):
        if b == interrupt_at_batch:
            collection.insert_many = dying_insert
        try:
            store.write_samples(samples([f"kill-{b:05d}"], 1_700_000_000, batch_rows, seed=b))
        except WriterKilled:
            break
        finally:
            if b == interrupt_at_batch:
                del collection.insert_many
        acked.append(b)
    return acked


def register_model(store_uri: str, artifact_root: str, model_dir: str) -> int:
    from eyenet.models.registry import ModelRegistry

    store = open_store(store_uri)
    try:
        return ModelRegistry(store, artifact_root).register(model_dir).version
    finally:
        store.close()


class Clock:
    """An injected clock: returns ``now``; with ``step`` it moves on after every reading.
    ``t`` is the same value (the monitor's tests speak of ``t``)."""

    def __init__(self, now: float = 0.0, step: float = 0.0) -> None:
        self.now, self.step = now, step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now

    @property
    def t(self) -> float:
        return self.now

    @t.setter
    def t(self, value: float) -> None:
        self.now = value


class ListSink:
    """An alert sink that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed = False

    def notify(self, event: Any) -> None:
        self.events.append(event)

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed = True


def wait_for(condition: Any, timeout_s: float = 120.0, what: str = "condition",
             poll_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or the deadline
    passes (AssertionError naming ``what``): tests wait on conditions, never fixed times."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def live_scorer(detector: Any, tmp_path: Any, metrics: list[str]) -> tuple[Any, Any]:
    """A fresh SQLite store and a LiveScorer of ``detector`` over it (on an injected clock):
    what a feature actor runs."""
    from eyenet.config import EyeNetConfig
    from eyenet.streaming.live import LiveScorer

    store = open_store(f"sqlite:///{tmp_path}/live.db")
    config = EyeNetConfig(metrics=metrics, counter_metrics=[], detector=detector.config.model_dump())
    return store, LiveScorer(detector, store, config, now_s=Clock())


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_naming(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of this machine's other processes whose command line holds
    ``text`` (a Ray session directory, a GCS port)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in cmdline and int(proc.name) != os.getpid():
            found.append((int(proc.name), cmdline))
    return found
