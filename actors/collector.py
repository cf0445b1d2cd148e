"""The device collector actor: a thin shell running :class:`eyenet.streaming.collector.Collector` in a
loop and forwarding what it stored to the feature pool.

The loop runs on a thread inside the actor so that ``stats``/``recent_frames``/``stop`` calls
are answered while it polls. It starts in ``__init__``: when Ray restarts a killed
collector (``max_restarts``) it re-runs ``__init__`` with the same arguments, the core
resumes from the store, and polling goes on without anyone calling ``start``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import zlib
from collections import Counter
from typing import Any

import pandas as pd

from actors.monitor import NAMESPACE
from eyenet.config import EyeNetConfig
from eyenet.sources.factory import build_source
from eyenet.store import open_store
from eyenet.streaming.collector import Collector
from eyenet.telemetry.schema import DEVICE

log = logging.getLogger(__name__)

# How long stats() waits for a running poll before it answers with the last poll's figures.
STATS_WAIT_S = 0.5
# Scoring calls a collector may have outstanding before it waits (backpressure from the pool).
MAX_INFLIGHT_SCORING = 4
COLLECTOR_CPUS = 0.05
# Collector actors are named COLLECTOR_PREFIX + ... in NAMESPACE, so Serve can find them.
COLLECTOR_PREFIX = "eyenet-collector-"
DISCOVERY_REFRESH_S = 10.0
# How long after a sample-grid tick a collector polls (sources need a moment to have it).
POLL_AFTER_TICK_S = 0.05


def next_poll_delay_s(now_s: float, interval_s: float, started_s: float) -> float:
    """Wait until just after the first sample-grid tick the last poll (begun at
    ``started_s``) could not have seen: sources stamp samples on that grid, so polling right
    after it keeps a sample's wait for its poll short (polling at an arbitrary phase would
    add up to a whole interval of latency). A poll that overran that tick polls again at
    once. Waiting instead for half an interval after a poll's start skipped the tick after a
    poll that began just before it: those samples waited a whole interval (at 10 s, one
    sample in a hundred of a 10,000-device bench was 11 s old when scored)."""
    seen_tick = (started_s - POLL_AFTER_TICK_S) // interval_s * interval_s
    return max(0.0, seen_tick + interval_s + POLL_AFTER_TICK_S - now_s)


def freeze_long_lived_objects() -> None:
    """Move what exists now (modules, config, the source) out of the garbage collector's
    sight: SNMP decoding allocates objects by the million, each full collection then
    rescanned them all (measured: 10 % of a poll's CPU with 400 devices per collector)."""
    gc.collect()
    gc.freeze()


def route(device_id: str, n_actors: int) -> int:
    """The feature actor that scores ``device_id``: stable, so its stream state stays put."""
    return zlib.crc32(device_id.encode()) % n_actors


class CollectorActor:
    def __init__(self, config: dict[str, Any], source_kind: str, source_options: dict[str, Any],
                 device_ids: list[str], name: str, feature_actors: list[Any] | None = None,
                 start_ms: int | None = None) -> None:
        self.config = EyeNetConfig.from_dict(config)
        source = build_source(source_kind, self.config, **source_options)
        self.core = Collector(self.config, source, open_store(self.config.store_uri), device_ids, name,
                              start_ms=start_ms)
        freeze_long_lived_objects()
        self.feature_actors = list(feature_actors or [])
        self.forwarded: Counter[str] = Counter()
        self._inflight: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.loop_errors = 0
        self._stats = self.core.stats()
        self._thread = threading.Thread(target=self._run, name=f"collector-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval_s = self.core.source.interval_s
        while not self._stop.is_set():
            started = time.time()
            caught_up = True
            try:
                with self._lock:
                    result = self.core.poll()
                    self._stats = self.core.stats()
                caught_up = result.caught_up and result.store_error is None
                if len(result.accepted) and self.feature_actors:
                    self._forward(result.accepted, result.polled_at_s)
            except Exception:  # the loop must outlive any one bad poll; the error is counted
                self.loop_errors += 1
                log.exception("collector %s: poll failed", self.core.name)
                caught_up = True
            if caught_up:
                self._stop.wait(next_poll_delay_s(time.time(), interval_s, started))

    def _forward(self, accepted: pd.DataFrame, polled_at_s: float) -> None:
        import ray

        routes = accepted[DEVICE].map(lambda d: route(d, len(self.feature_actors)))
        for index, part in accepted.groupby(routes.to_numpy()):
            self._inflight.append(self.feature_actors[index].score.remote(part.reset_index(drop=True),
                                                                          polled_at_s))
            self.forwarded["batches"] += 1
            self.forwarded["samples"] += len(part)
        if len(self._inflight) > MAX_INFLIGHT_SCORING:
            excess = len(self._inflight) - MAX_INFLIGHT_SCORING
            done, self._inflight = ray.wait(self._inflight, num_returns=excess)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:  # a scoring failure must not stop collection
                    self.forwarded["scoring_errors"] += 1
                    log.warning("collector %s: scoring call failed: %s", self.core.name, exc)

    # -- remote API ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Fresh when no poll is running; during a long poll (a backlog of thousands of
        samples on a busy machine) the figures as of the last poll's end, with their age, so
        that callers (the pipeline's progress, /metrics) are answered instead of timing out."""
        if self._lock.acquire(timeout=STATS_WAIT_S):
            try:
                self._stats = self.core.stats()
            finally:
                self._lock.release()
        stats = dict(self._stats)
        stats["stats_age_s"] = round(max(0.0, time.time() - self._stats["at_s"]), 3)
        stats["forwarded"] = dict(self.forwarded)
        stats["loop_errors"] = self.loop_errors
        stats["running"] = self._thread.is_alive() and not self._stop.is_set()
        stats["pid"] = os.getpid()
        return stats

    def recent_frames(self, device_ids: list[str]) -> pd.DataFrame:
        with self._lock:
            return self.core.recent_frames(device_ids)

    def device_ids(self) -> list[str]:
        return list(self.core.device_ids)

    def stop(self) -> dict[str, Any]:
        """Stop polling after the current poll, wait for outstanding scoring calls."""
        import ray

        self._stop.set()
        self._thread.join()
        if self._inflight:
            ray.wait(self._inflight, num_returns=len(self._inflight), timeout=30)
        return self.stats()


class LiveCollectors:
    """The running pipeline's collectors, seen from elsewhere in the cluster (the Serve
    detector replicas): they are named actors (``COLLECTOR_PREFIX`` in namespace
    ``eyenet``), found again every ``refresh_s`` so a pipeline started or stopped later
    is noticed. Every failure reads as "no collector has it": the caller falls back to
    the store."""

    def __init__(self, refresh_s: float = DISCOVERY_REFRESH_S, timeout_s: float = 2.0) -> None:
        self.refresh_s, self.timeout_s = refresh_s, timeout_s
        self._owner: dict[str, Any] = {}
        self._refresh_at = 0.0

    async def recent(self, device_ids: list[str]) -> pd.DataFrame | None:
        """The recent samples the collectors hold for ``device_ids`` (None when none does)."""
        import asyncio

        if time.monotonic() >= self._refresh_at:
            await self._discover()
        by_owner: dict[Any, list[str]] = {}
        for device in set(device_ids):
            if device in self._owner:
                by_owner.setdefault(self._owner[device], []).append(device)
        if not by_owner:
            return None
        try:
            frames = await asyncio.wait_for(
                asyncio.gather(*[h.recent_frames.remote(ds) for h, ds in by_owner.items()]), self.timeout_s)
        except Exception as exc:  # a stopped or restarting collector: use the store this time
            log.info("collectors unavailable (%s): reading live windows from the store", exc)
            self._refresh_at = 0.0
            return None
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else None

    async def _discover(self) -> None:
        import asyncio

        import ray

        self._refresh_at = time.monotonic() + self.refresh_s
        owner: dict[str, Any] = {}
        try:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["namespace"] == NAMESPACE and a["name"].startswith(COLLECTOR_PREFIX)]
            handles = [ray.get_actor(n, namespace=NAMESPACE) for n in names]
            devices = await asyncio.wait_for(asyncio.gather(*[h.device_ids.remote() for h in handles]),
                                             self.timeout_s)
            for handle, ids in zip(handles, devices, strict=True):
                owner.update(dict.fromkeys(ids, handle))
        except Exception as exc:
            log.info("could not list the pipeline's collectors: %s", exc)
        self._owner = owner
