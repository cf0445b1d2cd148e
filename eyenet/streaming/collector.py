"""Collecting telemetry for a group of devices: poll, validate, store, remember where we are.

One :class:`Collector` holds many logical per-device collectors (a Ray actor process costs
about 100 MB, so ``streaming.devices_per_actor`` devices share one). Each poll:

1. fetches, per device, the source's samples in ``(cursor, source.now_ms()]`` (at most
   ``fetch_chunk_s`` at a time, so a backlog or history generation proceeds in chunks);
2. runs the schema's rules (:class:`TelemetryValidator`), counting every repair and
   rejection by reason;
3. writes the accepted samples to the store (idempotent on device and timestamp), and only
   then saves the cursors and the validator's per-device state under
   ``collector/<name>`` in the store.

Why this order gives exactly-once storage across crashes: the saved state always describes
data that is already durable. A collector killed between the write and the state save
restarts from the older state, re-fetches the same span (sources are deterministic by
time range), recomputes the same counter rates from the same baselines, and the store
counts the re-written samples as duplicates instead of storing them twice.

Backpressure: accepted samples whose write failed stay in ``pending`` (with their cursors
not yet saved) and are retried first; once ``max_pending_samples`` are pending the
collector stops fetching until the store takes them. Nothing accepted is dropped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError, StoreError
from eyenet.sources.base import Source
from eyenet.store import Store
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, from_ms, ms_of, to_ms
from eyenet.telemetry.validation import DeviceState, TelemetryValidator

log = logging.getLogger(__name__)


@dataclass
class PollResult:
    """What one poll did. ``accepted`` holds the samples that became durable in this poll."""

    accepted: pd.DataFrame
    polled_at_s: float
    fetched: int = 0
    caught_up: bool = True      # False while a backlog remains (poll again without waiting)
    failed_devices: dict[str, str] = field(default_factory=dict)
    store_error: str | None = None


@dataclass
class _Backoff:
    failures: int = 0
    retry_at_s: float = 0.0
    last_error: str = ""


class Collector:
    def __init__(self, config: EyeNetConfig, source: Source, store: Store, device_ids: Sequence[str],
                 name: str, start_ms: int | None = None, now_s: Callable[[], float] = time.time) -> None:
        if not device_ids:
            raise SourceError(f"collector {name!r} was given no devices", source.name)
        self.config, self.source, self.store, self.name = config, source, store, name
        self.device_ids = list(dict.fromkeys(device_ids))
        self.state_key = f"collector/{name}"
        self._now_s = now_s
        # "far in the future" is judged on the source's own timeline (a replay of last
        # year's files is not from the past, and a defect stamped a day ahead still is)
        self.validator = TelemetryValidator(config, lambda: source.now_ms() / 1000.0)
        self.pending: list[pd.DataFrame] = []
        self.repaired: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.device_errors: Counter[str] = Counter()
        self._backoff: dict[str, _Backoff] = {}
        self._source_backoff = _Backoff()
        self.last_sample_ms: dict[str, int] = {}
        # enough for /v1/predict's window (window + 1 + smoothing), so it can read it here
        rows = config.streaming.buffer_samples or config.detector.window_steps + 1 + config.detector.smoothing
        self.recent: dict[str, deque[tuple[int, np.ndarray]]] = {
            d: deque(maxlen=rows) for d in self.device_ids}
        if start_ms is None:
            first = source.first_ms()
            start_ms = first - 1 if first is not None else source.now_ms()
        self.cursor_ms = self._restore(start_ms)

    # -- state -------------------------------------------------------------------------------
    def _restore(self, start_ms: int) -> dict[str, int]:
        """Cursors and validator state from the store; new devices start at ``start_ms``."""
        saved = self.store.get_state(self.state_key) or {}
        cursors = {d: int(start_ms) for d in self.device_ids}
        for entry in saved.get("devices", []):
            device = entry["device_id"]
            if device not in cursors:
                continue
            cursors[device] = int(entry["cursor_ms"])
            self.validator.restore(device, DeviceState(entry.get("last_ts_ms"),
                                                       dict(entry.get("counter_raw", {})),
                                                       dict(entry.get("counter_ts_ms", {}))))
        self.totals.update(saved.get("totals", {}))
        self.repaired.update(saved.get("repaired", {}))
        self.rejected.update(saved.get("rejected", {}))
        if saved:
            self._reload_recent()
            log.info("collector %s resumed %d devices from the store", self.name,
                     len(saved.get("devices", [])))
        return cursors

    def _reload_recent(self) -> None:
        window_s = (self.recent[self.device_ids[0]].maxlen or 1) * self.config.sample_interval_s
        for device in self.device_ids:
            frame = self.store.last_window(device, window_s=window_s)
            self._remember_recent(frame)

    def _save_state(self) -> None:
        devices = []
        for device in self.device_ids:
            state = self.validator.device_state(device) or DeviceState()
            devices.append({"device_id": device, "cursor_ms": self.cursor_ms[device],
                            "last_ts_ms": state.last_ts_ms, "counter_raw": state.counter_raw,
                            "counter_ts_ms": state.counter_ts_ms})
        self.store.put_state(self.state_key, {"devices": devices, "totals": dict(self.totals),
                                              "repaired": dict(self.repaired),
                                              "rejected": dict(self.rejected)})

    # -- polling -------------------------------------------------------------------------------
    def poll(self) -> PollResult:
        """Fetch what is due, validate, write; see the module docstring for the guarantees."""
        now_s = self._now_s()
        result = PollResult(self._empty(), now_s)
        if sum(len(p) for p in self.pending) < self.config.streaming.max_pending_samples:
            batch, result.caught_up = self._fetch(now_s, result)
            if batch is not None:
                self.pending.append(batch)
        elif self.pending:
            result.caught_up = False
        if not self.pending:
            return result
        frame = pd.concat(self.pending, ignore_index=True) if len(self.pending) > 1 else self.pending[0]
        try:
            written = self.store.write_samples(frame)
            self._save_state()
        except StoreError as exc:
            result.store_error = str(exc)
            self.totals["store_errors"] += 1
            log.warning("collector %s: store write failed, %d samples kept pending: %s",
                        self.name, len(frame), exc)
            return result
        self.pending = []
        self.totals["stored"] += written.inserted
        self.totals["store_duplicates"] += written.duplicates
        self._remember_recent(frame)
        result.accepted = frame
        return result

    def _fetch(self, now_s: float, result: PollResult) -> tuple[pd.DataFrame | None, bool]:
        if now_s < self._source_backoff.retry_at_s:
            return None, True
        until_ms = int(self.source.now_ms())
        chunk_ms = int(self.config.streaming.fetch_chunk_s * 1000)
        due: dict[tuple[int, int], list[str]] = {}
        caught_up = True
        for device in self.device_ids:
            since = self.cursor_ms[device]
            backoff = self._backoff.get(device)
            if since >= until_ms or (backoff and now_s < backoff.retry_at_s):
                continue
            end = min(until_ms, since + chunk_ms)
            caught_up &= end >= until_ms
            due.setdefault((since, end), []).append(device)
        frames = []
        counter_bits: dict[str, int] = {}
        discontinuous: set[str] = set()
        for (since, end), devices in due.items():
            try:
                fetched = self.source.fetch(devices, since, end)
            except SourceError as exc:
                self._fail(self._source_backoff, str(exc), now_s)
                self.totals["source_errors"] += 1
                log.warning("collector %s: source %s failed: %s", self.name, self.source.name, exc)
                break
            self._source_backoff = _Backoff()
            for device in devices:
                if device in fetched.failed:
                    self._fail(self._backoff.setdefault(device, _Backoff()), fetched.failed[device], now_s)
                    self.device_errors[device] += 1
                    result.failed_devices[device] = fetched.failed[device]
                else:
                    self._backoff.pop(device, None)
                    self.cursor_ms[device] = end
            counter_bits.update(fetched.counter_bits)
            discontinuous |= fetched.discontinuous
            samples = fetched.samples
            if len(samples) and fetched.failed:
                samples = samples[~samples[DEVICE].isin(list(fetched.failed))]
            result.fetched += len(samples)
            frames.append(samples)
        if not frames:
            return None, caught_up
        raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if raw.empty:
            return None, caught_up
        checked = self.validator.validate(raw, counter_bits, discontinuous)
        self.repaired.update(checked.repaired_counts)
        self.rejected.update(checked.rejected_counts)
        self.totals["fetched"] += len(raw)
        self.totals["accepted"] += checked.n_accepted
        self.totals["rejected"] += checked.n_rejected
        if checked.n_rejected:
            log.debug("collector %s rejected %s", self.name, dict(checked.rejected_counts))
        if checked.accepted.empty:
            return None, caught_up
        for device, ts in checked.accepted.groupby(DEVICE)[TIMESTAMP].max().items():
            self.last_sample_ms[device] = ms_of(ts)
        return checked.accepted, caught_up

    def _fail(self, backoff: _Backoff, error: str, now_s: float) -> None:
        cfg = self.config.streaming
        backoff.failures += 1
        backoff.last_error = error
        backoff.retry_at_s = now_s + min(cfg.retry_max_s, cfg.retry_initial_s * 2 ** (backoff.failures - 1))

    # -- views ---------------------------------------------------------------------------------
    def _remember_recent(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        metrics = self.config.metrics
        ts_ms = to_ms(frame[TIMESTAMP]).to_numpy()
        values = frame[metrics].to_numpy(np.float64, copy=True)
        for device, t, row in zip(frame[DEVICE].to_numpy(), ts_ms, values, strict=True):
            buffer = self.recent.get(device)
            if buffer is not None and (not buffer or t > buffer[-1][0]):
                buffer.append((int(t), row))

    def recent_frames(self, device_ids: list[str]) -> pd.DataFrame:
        """Recent samples of those of ``device_ids`` this collector has, by device then time."""
        rows = [(d, t, v) for d in sorted(set(device_ids) & self.recent.keys()) for t, v in self.recent[d]]
        values = np.array([v for _, _, v in rows]).reshape(len(rows), len(self.config.metrics))
        frame = pd.DataFrame(values, columns=self.config.metrics)
        frame.insert(0, TIMESTAMP, from_ms([t for _, t, _ in rows]))
        frame.insert(0, DEVICE, [d for d, _, _ in rows])
        return frame

    def stats(self) -> dict[str, Any]:
        now_ms = self._now_s() * 1000
        silent_after_ms = 3 * self.config.gap_s * 1000
        oldest_ms = min(self.cursor_ms.values())
        return {"name": self.name, "at_s": now_ms / 1000.0, "devices": len(self.device_ids),
                "totals": dict(self.totals),
                "repaired": dict(self.repaired), "rejected": dict(self.rejected),
                "pending_samples": sum(len(p) for p in self.pending),
                "failing_devices": {d: {"failures": b.failures, "error": b.last_error}
                                    for d, b in self._backoff.items()},
                "device_errors": dict(self.device_errors),
                "source_error": self._source_backoff.last_error or None,
                "silent_devices": sorted(d for d in self.device_ids
                                         if now_ms - self.last_sample_ms.get(d, now_ms) > silent_after_ms),
                "oldest_cursor_ms": oldest_ms,
                "lag_s": max(0.0, (self.source.now_ms() - oldest_ms) / 1000.0)}

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame(columns=[DEVICE, TIMESTAMP, *self.config.metrics, LABEL])
