"""The monitor: one named, detached actor per cluster, shell of :class:`eyenet.monitoring.Monitor`.

Detached so it outlives the job that started it (``eyenet report`` and later jobs find it
by name); looked up with ``get_if_exists`` so concurrent starters share one; restarted
by Ray when it dies, and then it rebuilds its state from the store (open alerts from
events, drift and anomaly windows from its saved state). A thread runs the alert rules
every ``monitor.check_interval_s`` and saves snapshots, so alerts resolve even when no
scores arrive.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import EyeNetError
from eyenet.monitoring import Monitor, ScoreSummary
from eyenet.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.store import open_store

log = logging.getLogger(__name__)

MONITOR_NAME = "eyenet-monitor"
NAMESPACE = "eyenet"
MONITOR_CPUS = 0.05


def production_reference(config: EyeNetConfig,
                         name: str = DEFAULT_MODEL_NAME) -> tuple[dict | None, int | None]:
    """The training feature reference stored with the production model, if there is one."""
    from eyenet.detector import REFERENCE_FILE

    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    production = registry.production(name)
    if production is None:
        return None, None
    import json

    path = registry.fetch(name, production.version)
    return json.loads((path / REFERENCE_FILE).read_text()), production.version


class MonitorActor:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = EyeNetConfig.from_dict(config)
        try:
            reference, version = production_reference(self.config)
        except EyeNetError as exc:  # no model yet is fine: latency and alerts still work
            log.warning("monitor: no drift reference (%s)", exc)
            reference, version = None, None
        # sinks (log, webhook thread) are built here, in the actor's process, from the config
        self.monitor = Monitor(self.config, open_store(self.config.store_uri), reference, version)
        self._lock = threading.Lock()
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
        return stats

    def open_alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e.to_dict() for e in self.monitor.alerts.open_alerts()]

    def report(self, since_s: float, until_s: float | None = None) -> dict[str, Any]:
        with self._lock:
            self.monitor.snapshot()
            return self.monitor.report(since_s, until_s)

    def set_reference(self, reference: dict[str, Any] | None, model_version: int | None) -> None:
        with self._lock:
            self.monitor.set_reference(reference, model_version)

    def shutdown(self) -> None:
        """Save a last snapshot and drain the webhook queue (before the actor is killed)."""
        self._stop.set()
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
