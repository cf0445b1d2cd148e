"""Serve autoscaling for real: load on ``/v1/score`` takes the detector deployment from its
minimum of one replica to two, and when the load drops to a trickle it goes back to one,
with every request answered 200 through both changes.

The config shortens Serve's autoscaling delays (defaults: 30 s up, 600 s down, 30 s look
back) and asks 0.1 CPU per detector replica, so two replicas fit beside whatever else the
suite's 2-CPU Ray holds. The handle in the ingress reports its ongoing requests to the
controller every 10 s (Serve's deprecated ``metrics_interval_s``), so each change takes a
report or two; the test polls the replica count, it never sleeps a fixed time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

from eyenet.detection.detector import Detector
from tests.helpers import free_port, wait_for
from tests.synthetic import METRICS, config, promoted_store, telemetry

pytestmark = pytest.mark.usefixtures("ray_cluster")

LOAD_CLIENTS = 8  # in flight at once: 8 ongoing / target 2 asks for 4 replicas, capped at 2
SCALE_TIMEOUT_S = 180.0  # a report every 10 s, a replica start (torch import, model load) on 2 busy cores



@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory) -> Iterator[str]:
    from ray import serve

    from serve_app.deployments import APP_NAME, build_app

    tmp = tmp_path_factory.mktemp("autoscale")
    detector = Detector(config(), METRICS, gap_s=3.0).fit(telemetry(400))
    # look_back_period_s above the 10 s report interval: Serve warns about a shorter one
    cfg, _, _, _ = promoted_store(tmp, detector,
                                  serve={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                         "upscale_delay_s": 1, "downscale_delay_s": 2,
                                         "look_back_period_s": 11, "replica_cpus": 0.1,
                                         "max_batch_size": 8, "batch_wait_timeout_s": 0.002})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()


def detector_replicas() -> dict[str, int]:
    """The detector deployment's replicas by state (RUNNING, STARTING, STOPPING, ...)."""
    from ray import serve

    from serve_app.deployments import APP_NAME

    app = serve.status().applications.get(APP_NAME)
    if app is None or "Detector" not in app.deployments:
        return {}
    return {str(getattr(state, "value", state)): n
            for state, n in app.deployments["Detector"].replica_states.items() if n}


class Load:
    """Client threads posting one window to ``/v1/score`` back to back, every answer's
    status counted (a transport error counts under its exception's name)."""

    def __init__(self, url: str) -> None:
        window = telemetry(40, start_s=9000, seed=2, devices=("w1",))
        self.body = {"windows": [{"device_id": "w1", "values": window[METRICS].to_numpy().tolist()}]}
        self.url = url
        self.statuses: Counter[Any] = Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(self, clients: int) -> None:
        for _ in range(clients):
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(stop,), daemon=True)
            thread.start()
            self._threads.append((thread, stop))

    def stop(self, keep: int = 0) -> None:
        """Stop all clients but ``keep`` of them."""
        while len(self._threads) > keep:
            thread, stop = self._threads.pop()
            stop.set()
            thread.join()

    def answered(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def _client(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{self.url}/v1/score", json=self.body)
                    status: Any = r.status_code
                    text = "" if status == 200 else r.text
                except httpx.HTTPError as exc:
                    status, text = type(exc).__name__, str(exc)
                with self._lock:
                    self.statuses[status] += 1
                    if text:
                        self.failures.append(f"{status}: {text[:200]}")


def test_load_scales_the_detector_up_and_a_trickle_lets_it_scale_back_down(autoscaled):
    wait_for(lambda: detector_replicas() == {"RUNNING": 1}, SCALE_TIMEOUT_S, "one running detector replica")
    load = Load(autoscaled)
    try:
        load.start(LOAD_CLIENTS)
        wait_for(lambda: detector_replicas().get("RUNNING", 0) >= 2, SCALE_TIMEOUT_S,
                 "the detector to scale up to 2 running replicas under load", poll_s=0.5)
        # the new replica takes traffic before the load drops
        taken = load.answered()
        wait_for(lambda: load.answered() >= taken + 4 * LOAD_CLIENTS, SCALE_TIMEOUT_S,
                 "requests answered with two replicas")
        up = dict(load.statuses)
        # one sequential client: at most one request in flight, under the target of 2, so
        # Serve scales down while it runs, and its requests must survive the drain
        load.stop(keep=1)
        wait_for(lambda: detector_replicas() == {"RUNNING": 1}, SCALE_TIMEOUT_S,
                 "the detector to scale back down to 1 replica after the load stops", poll_s=0.5)
        after = load.answered()
        wait_for(lambda: load.answered() > after, SCALE_TIMEOUT_S, "a request answered after the scale-down")
    finally:
        load.stop()
    assert load.failures == []
    assert set(load.statuses) == {200}, load.statuses
    assert up[200] > 0 and load.statuses[200] > up[200]
