"""The monitor: one named, detached actor per cluster, shell of :class:`eyenet.monitoring.monitor.Monitor`.

Detached so it outlives the job that started it (``eyenet report`` and later jobs find it
by name); looked up with ``get_if_exists`` so concurrent starters share one; restarted
by Ray when it dies, and then it rebuilds its state from the store (open alerts from
events, drift and anomaly windows from its saved state). A thread runs the alert rules
every ``monitor.check_interval_s`` and saves snapshots, so alerts resolve even when no
scores arrive. A second thread follows the registry's production model
(:class:`eyenet.models.follower.ProductionFollower`, as the pool and Serve replicas do):
drift is judged against the training feature reference of whatever version is in
production now, including one promoted after the monitor started (a collect-only
pipeline starts it before any model exists).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.models.follower import Followed, ProductionFollower
from eyenet.models.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.monitoring.monitor import Monitor, ScoreSummary
from eyenet.store import open_store

log = logging.getLogger(__name__)

MONITOR_NAME = "eyenet-monitor"
NAMESPACE = "eyenet"
MONITOR_CPUS = 0.05


def load_reference(registry: ModelRegistry, name: str, version: int) -> dict[str, Any] | None:
    """The training feature reference stored with ``version`` (None: it has none, so that
    version's batches are counted but never judged for drift)."""
    from eyenet.detection.detector import REFERENCE_FILE

    with registry.opened(name, version) as directory:
        path = directory / REFERENCE_FILE
        if not path.exists():
            log.warning("monitor: %s v%s has no %s; no drift for it", name, version, REFERENCE_FILE)
            return None
        return json.loads(path.read_text())


class MonitorActor:
    def __init__(self, config: dict[str, Any], model_name: str = DEFAULT_MODEL_NAME) -> None:
        self.config = EyeNetConfig.from_dict(config)
        store = open_store(self.config.store_uri)
        registry = ModelRegistry(store, self.config.artifact_root)
        self.follower = ProductionFollower.of_registry(
            registry, model_name, lambda v: load_reference(registry, model_name, v),
            self.config.registry_poll_interval_s, what=f"{model_name} drift reference")
        self.follower.check()  # no model yet (or no store) is fine: latency and alerts still work
        followed = self.follower.current
        reference, version = (None, None) if followed is None else (followed.value, followed.version)
        # sinks (log, webhook thread) are built here, in the actor's process, from the config
        self.monitor = Monitor(self.config, store, reference, version)
        self._lock = threading.Lock()
        self._stop_following = self.follower.start("monitor-model-follower", self._take_reference)
        self._stop = threading.Event()
        self.loop_errors = 0
        self._thread = threading.Thread(target=self._run, name="monitor-rules", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.monitor.check_interval_s):
            try:
                with self._lock:
                    self.monitor.check()
                    self.monitor.maybe_snapshot()
            except Exception:  # keep monitoring; the failure is logged and counted
                self.loop_errors += 1
                log.exception("monitor: rule check failed")

    def _take_reference(self, followed: Followed[dict[str, Any] | None]) -> None:
        """A new production version: drift restarts against its reference (loaded on the
        follower's thread, outside the lock, so scores keep being recorded meanwhile).
        Batches of the old model still in flight are then counted as ``drift_skipped``,
        never binned against the wrong reference."""
        with self._lock:
            self.monitor.set_reference(followed.value, followed.version)

    # -- remote API ---------------------------------------------------------------------------
    def record(self, summary: ScoreSummary) -> None:
        with self._lock:
            self.monitor.record(summary)

    def check(self) -> list[dict[str, Any]]:
        """Run the rules now; the alerts opened or resolved by this call."""
        with self._lock:
            return [e.to_dict() for e in self.monitor.check()]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = self.monitor.stats()
        stats["loop_errors"] = self.loop_errors
        stats["follower"] = self.follower.stats()
        stats["pid"] = os.getpid()   # a new one after a restart
        return stats

    def metrics(self) -> dict[str, Any]:
        """What the API's ``/metrics`` exports from the monitor (:meth:`Monitor.metrics`)."""
        with self._lock:
            return self.monitor.metrics()

    def open_alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e.to_dict() for e in self.monitor.alerts.open_alerts()]

    def report(self, since_s: float, until_s: float | None = None) -> dict[str, Any]:
        """The report of ``[since_s, until_s)``, current period included; writes nothing
        (the rules thread keeps saving snapshots on its own schedule)."""
        with self._lock:
            return self.monitor.report(since_s, until_s)

    def save_report(self, since_s: float, until_s: float | None = None) -> dict[str, Any]:
        """:meth:`report`, saved in the store as a ``report`` (its ``report_id`` filled in)."""
        with self._lock:
            return self.monitor.save_report(since_s, until_s)

    def shutdown(self) -> None:
        """Save a last snapshot and drain the webhook queue (before the actor is killed)."""
        self._stop.set()
        self._stop_following.set()
        with self._lock:
            self.monitor.snapshot()
        self.monitor.close(5.0)


def get_monitor(config: EyeNetConfig) -> Any:
    """The cluster's monitor actor, created if it does not exist yet."""
    import ray

    return ray.remote(MonitorActor).options(
        name=MONITOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=-1, num_cpus=MONITOR_CPUS,
    ).remote(config.to_dict())


def find_monitor() -> Any | None:
    """The running monitor actor, or None (``eyenet report`` falls back to the store)."""
    import ray

    try:
        return ray.get_actor(MONITOR_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
