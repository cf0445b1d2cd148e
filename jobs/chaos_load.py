"""The chaos soak's HTTP load: keep-alive clients calling ``/v1/predict`` and ``/v1/score``
at a steady rate from this driver, every request kept with its times and status, and the
failures told apart by whether they were in flight on a replica as it was killed."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

REQUEST_TIMEOUT_S = 30.0


@dataclass
class Request:
    path: str
    started_s: float
    ended_s: float
    status: int   # 0: no answer (connection refused or reset, timeout)
    detail: str = ""   # what a failed request was answered (its start), or the client's error


@dataclass
class HttpLoad:
    """``clients`` keep-alive clients on their own event loop (a thread of this driver),
    together sending ``rate`` requests/s, alternating ``/v1/predict`` and ``/v1/score``."""

    url: str
    devices: list[str]
    score_body: dict[str, Any]
    clients: int
    rate: float
    requests: list[Request] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-load",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(REQUEST_TIMEOUT_S + 10)

    async def _run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients),
                                         timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    async def _client(self, session: Any, index: int) -> None:
        import aiohttp

        period_s = self.clients / self.rate
        rng = random.Random(index)
        next_s = time.monotonic() + rng.random() * period_s
        calls = 0
        while not self._stop.is_set():
            await asyncio.sleep(max(0.0, next_s - time.monotonic()))
            next_s += period_s
            calls += 1
            if calls % 2:
                path, body = "/v1/predict", {"device_id": rng.choice(self.devices)}
            else:
                path, body = "/v1/score", self.score_body
            started, detail = time.time(), ""
            try:
                async with session.post(self.url + path, json=body) as response:
                    text = await response.text()
                    status = response.status
                    detail = "" if status == 200 else text[:200]
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"[:200]
            self.requests.append(Request(path, started, time.time(), status, detail))


def http_figures(requests: list[Request], faults: list[Any], soak_started_s: float) -> dict[str, Any]:
    """Requests by status; a failure is excused only when it was in flight as a replica was
    killed (it started before the kill and ended after it)."""
    kills = [soak_started_s + f.at_s for f in faults if f.kind == "serve_replica"]
    failed = [r for r in requests if r.status != 200]
    in_flight = [r for r in failed if any(r.started_s <= k <= r.ended_s + 0.5 for k in kills)]
    other = [r for r in failed if r not in in_flight]
    ms = np.array([r.ended_s - r.started_s for r in requests if r.status == 200]) * 1000
    by_status: dict[str, int] = {}
    for r in failed:
        by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
    return {"http_requests": len(requests), "http_failed": len(failed), "http_failed_by_status": by_status,
            "http_failed_in_flight_on_killed_replica": len(in_flight), "http_failed_otherwise": len(other),
            "http_failed_otherwise_examples": [asdict(r) for r in other[:5]],
            "http_p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "http_p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}
