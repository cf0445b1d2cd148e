"""The demo's live phase, apart from Ray: the ground truth of the incidents it injects, and
the poller that asks the API about every device and feeds the live view."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import EyeNetError
from eyenet.sources.incidents import Incident
from jobs.demo_scoring import Truth, truths_from
from jobs.demo_view import LiveView
from jobs.predict import predict

PREDICT_EVERY_S = 3.0


def run_live(config: EyeNetConfig, devices: int, seconds: float,
             incidents: Sequence[tuple[str, str, float, float, float | None]],
             ) -> tuple[dict[str, Any], list[Truth], float]:
    """Follow the live clock for ``seconds`` with ``incidents`` (kind, device, start s after
    now, duration s, magnitude or None) injected, as ``jobs.ingest`` does but with each
    incident's size; returns ingest's summary, the ground truth (the incidents as the
    simulator resolved them, snapped outward to the sample grid) and the start time."""
    from actors.pipeline import start_pipeline
    from eyenet.sources.simulator import SimulatedSource
    from jobs.ingest import summarise

    started_s = time.time()
    origin_ms = int(started_s * 1000)
    options: dict[str, Any] = {"devices": devices, "origin_wall_s": started_s, "incidents": [
        Incident(device, kind, origin_ms + int(start * 1000), origin_ms + int((start + duration) * 1000),
                 [], magnitude) for kind, device, start, duration, magnitude in incidents]}
    source = SimulatedSource(config, **options)
    try:
        truths = truths_from(source.incidents_between(origin_ms - 1, origin_ms + 86_400_000))
    finally:
        source.close()
    pipeline = start_pipeline(config, "simulated", options)
    try:
        while time.time() - started_s < seconds:
            time.sleep(0.5)  # the actors do the work; the poller shows it
    finally:
        final = pipeline.stop()
    return summarise(final, time.time() - started_s), truths, started_s


class Poller:
    """Asks ``/v1/predict`` about every device every ``PREDICT_EVERY_S`` and feeds the view."""

    def __init__(self, url: str, devices: list[str], store: Any, started_s: float) -> None:
        self.url, self.devices, self.store, self.started_s = url, devices, store, started_s
        self.latest: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.answered = self.failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, view: LiveView) -> None:
        self._thread = threading.Thread(target=self._run, args=(view,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _ask(self, device: str) -> dict[str, Any] | None:
        try:
            return predict(self.url, device, timeout_s=10)
        except EyeNetError:  # the demo goes on; a failed call is counted, not fatal
            return None

    def _run(self, view: LiveView) -> None:
        with ThreadPoolExecutor(4) as pool:
            while not self._stop.wait(PREDICT_EVERY_S):
                for device, answer in zip(self.devices, pool.map(self._ask, self.devices), strict=True):
                    if answer is None:
                        self.failed += 1
                        continue
                    self.answered += 1
                    self.latest[device] = answer
                    self.history.setdefault(device, []).append(answer)
                try:
                    events = self.store.list_events(since=self.started_s - 600, status="open", limit=10_000)
                except Exception:  # a busy store only delays the alert column
                    events = []
                open_alerts: dict[str, int] = {}
                for e in events:
                    if e.device_id and e.kind in ("anomaly", "device_anomaly"):
                        open_alerts[e.device_id] = open_alerts.get(e.device_id, 0) + 1
                view.update(self.latest, open_alerts, time.time() - self.started_s)
