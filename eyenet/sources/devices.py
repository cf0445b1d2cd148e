"""The configured fleet as one source: each device of ``config.devices`` read from its own
SNMP agent, node_exporter, Prometheus server and latency probe (``--source devices``).

Polls run concurrently on one asyncio event loop in a thread the source owns (one SNMP
engine, one HTTP session for all devices), at most ``POLL_CONCURRENCY`` at a time, so a
collector actor polls its whole share of the fleet in one fetch. A device whose poll fails
lands in ``FetchResult.failed`` with the reason; the collector backs it off and counts it,
and the other devices are unaffected.

Live devices (SNMP, node_exporter, probe) are read *now* and stamped at ``until_ms``; a
fetch range wholly in the past returns nothing for them (see :mod:`eyenet.sources.base`).
Prometheus devices are range queries ``lag_s`` behind, so a re-fetch returns the same
samples. Credentials are read from the environment once, when the source starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError
from eyenet.sources.base import FetchResult, Source, empty_samples
from eyenet.sources.probe import ProbeError, probe_ms
from eyenet.sources.prometheus import PrometheusSourceError, query_range, range_steps, scrape
from eyenet.sources.snmp import SnmpPoller, SnmpPollError, auth_data
from eyenet.sources.specs import DeviceSpec
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, from_ms

log = logging.getLogger(__name__)
# Polls in flight at once. Measured on 2 cores against 4 loopback agents: 64 gave 254 polls/s
# at 3.9 ms CPU each, 16 gave 221, 256 only 130 at 6.0 ms (pysnmp's per-request bookkeeping
# grows with what is pending, and late answers time out and are retried).
POLL_CONCURRENCY = 64
POLL_ERRORS = (SnmpPollError, PrometheusSourceError, ProbeError, SourceError)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Ray's Serve extra brings it, and Ray's worker processes
    run it anyway, so a collector actor polls on the same loop as the benchmark): measured
    against 4 loopback agents, 276 SNMP polls/s against asyncio's 245."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class DeviceSource(Source):
    name = "devices"

    def __init__(self, config: EyeNetConfig, device_ids: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time, snmp_poller: SnmpPoller | None = None) -> None:
        """``snmp_poller``: the agents' reader (tests replay recorded answers through one)."""
        self.metrics = list(config.metrics)
        self.interval_s = config.sample_interval_s
        self._clock = clock
        specs = {spec.id: spec for spec in config.devices}
        if not specs:
            raise SourceError("no devices configured: list them under `devices:` in the config "
                              "(see eyenet/sources/specs.py)", source=self.name)
        unknown = sorted(set(device_ids or ()) - set(specs))
        if unknown:
            raise SourceError(f"devices {unknown} are not in the config's devices", source=self.name)
        self._specs = {d: specs[d] for d in (device_ids or specs)}
        self._credentials: dict[str, Any] = {}
        self._setup_errors: dict[str, str] = {}   # a device whose credentials are missing fails alone
        for device_id, spec in self._specs.items():
            if spec.snmp is not None:
                try:
                    self._credentials[device_id] = auth_data(device_id, spec.snmp)
                except SourceError as exc:   # names the variable, never a value
                    self._setup_errors[device_id] = str(exc)
        self.poll_errors: Counter[str] = Counter()   # by device kind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._poller: SnmpPoller | None = snmp_poller
        self._session: aiohttp.ClientSession | None = None

    def devices(self) -> list[str]:
        return list(self._specs)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the event loop the polls run on -------------------------------------------------------
    def _run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        if self._loop is None:
            self._loop = _new_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="device-polls", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def close(self) -> None:
        if self._loop is None:
            return
        if self._session is not None:
            self._run(self._session.close(), 10.0)
        if isinstance(self._poller, SnmpPoller):
            self._run(self._poller.close(), 10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10.0)
        self._loop.close()
        self._loop = None

    # -- fetching ------------------------------------------------------------------------------
    def fetch(self, device_ids: Sequence[str], since_ms: int, until_ms: int) -> FetchResult:
        now_ms = self.now_ms()
        until_ms = min(int(until_ms), now_ms)
        result = FetchResult(empty_samples(self.metrics, label=False))
        wanted = list(dict.fromkeys(device_ids))
        for device_id in wanted:
            if device_id not in self._specs:
                result.failed[device_id] = f"device {device_id!r} is no longer configured"
            elif device_id in self._setup_errors:
                result.failed[device_id] = self._setup_errors[device_id]
        todo = [d for d in wanted if d not in result.failed]
        # a live reading belongs to now: a range that ended more than a poll ago is history
        live_due = until_ms > since_ms and now_ms - until_ms <= 1.5 * self.interval_s * 1000
        timeout_s = 30.0 + max((self._timeout_s(self._specs[d]) for d in todo), default=0.0)
        rows = self._run(self._fetch_all(todo, int(since_ms), until_ms, live_due, result), timeout_s)
        if rows:
            frame = pd.DataFrame(rows).reindex(columns=[DEVICE, "ts_ms", *self.metrics])
            frame.insert(1, TIMESTAMP, from_ms(frame.pop("ts_ms").to_numpy()))
            result.samples = frame.astype({m: "float64" for m in self.metrics})
        return result

    @staticmethod
    def _timeout_s(spec: DeviceSpec) -> float:
        own = spec.snmp.timeout_s * (spec.snmp.retries + 1) * 4 if spec.snmp else 0.0
        for part in (spec.node_exporter, spec.prometheus, spec.latency_probe):
            own = max(own, part.timeout_s if part else 0.0)
        return own

    async def _fetch_all(self, device_ids: list[str], since_ms: int, until_ms: int, live_due: bool,
                         result: FetchResult) -> list[dict[str, Any]]:
        if self._poller is None:
            self._poller = SnmpPoller()   # on this loop: pysnmp's engine binds to the running loop
        if self._session is None:
            self._session = aiohttp.ClientSession()
        limit = asyncio.Semaphore(POLL_CONCURRENCY)
        rows: list[dict[str, Any]] = []

        async def one(device_id: str) -> None:
            spec = self._specs[device_id]
            if spec.prometheus is None and not live_due:
                return
            async with limit:
                try:
                    rows.extend(await self._read(spec, since_ms, until_ms, result))
                except POLL_ERRORS as exc:
                    self.poll_errors[spec.kind] += 1
                    result.failed[device_id] = str(exc)
                except Exception as exc:  # a fault of ours stays this device's, not the fleet's
                    self.poll_errors[spec.kind] += 1
                    result.failed[device_id] = f"{spec.kind} poll failed: {type(exc).__name__}: {exc}"
                    log.exception("device %s: %s poll failed", device_id, spec.kind)

        await asyncio.gather(*(one(d) for d in device_ids))
        return rows

    async def _read(self, spec: DeviceSpec, since_ms: int, until_ms: int,
                    result: FetchResult) -> list[dict[str, Any]]:
        if spec.prometheus is not None:
            return await self._query(spec, since_ms, until_ms)
        row: dict[str, Any] = {DEVICE: spec.id, "ts_ms": until_ms}
        reading = self._read_live(spec, row, result)
        probe = self._probe(spec, row) if spec.latency_probe else None
        outcomes = await asyncio.gather(*(c for c in (reading, probe) if c is not None),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if spec.kind == "probe" or not isinstance(outcome, ProbeError):
                    raise outcome
                # the counters are good; a lost probe is a missing latency (counted by the validator)
                self.poll_errors["probe"] += 1
                log.info("device %s: %s", spec.id, outcome)
        return [row]

    async def _read_live(self, spec: DeviceSpec, row: dict[str, Any], result: FetchResult) -> None:
        if spec.snmp is not None:
            assert self._poller is not None
            reading = await self._poller.poll(spec.id, spec.snmp, self._credentials[spec.id])
            if reading.restarted:
                result.discontinuous.add(spec.id)
            if reading.bits != 64:
                result.counter_bits[spec.id] = reading.bits
            # the config's cross-checks keep every mapped metric one of its metrics
            for metric, counter in spec.snmp.metrics.items():
                row[metric] = reading.counters.get(counter, math.nan)
        elif spec.node_exporter is not None:
            assert self._session is not None
            row.update(await scrape(self._session, spec.node_exporter))

    async def _probe(self, spec: DeviceSpec, row: dict[str, Any]) -> None:
        assert spec.latency_probe is not None
        row["latency"] = await probe_ms(spec.latency_probe, spec.probe_host() or "")

    async def _query(self, spec: DeviceSpec, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        assert spec.prometheus is not None and self._session is not None
        lag_ms = round(spec.prometheus.lag_s * 1000)
        step_ms = max(1, round((spec.prometheus.step_s or self.interval_s) * 1000))
        span = range_steps(since_ms - lag_ms, until_ms - lag_ms, step_ms)
        if span is None:
            return []
        metrics = list(spec.prometheus.queries)
        answers = await asyncio.gather(*(query_range(self._session, spec.prometheus, m, *span, step_ms)
                                         for m in metrics))
        by_ts: dict[int, dict[str, Any]] = {}
        for metric, values in zip(metrics, answers, strict=True):
            for ts_ms, value in values.items():
                by_ts.setdefault(ts_ms, {DEVICE: spec.id, "ts_ms": ts_ms})[metric] = value
        return [by_ts[t] for t in sorted(by_ts)]
