"""An in-process backend for the API: one detector, the store, the registry, no Ray.

It serves the unit tests and the serve benchmark's "bare FastAPI" baseline; the Serve
ingress reuses its read-only endpoints and replaces scoring with calls to the batched
detector deployment. ``/metrics`` is gathered here too: the store's and the registry's
figures by :class:`StoreViews`, the live parts (monitor, collectors) by whoever holds them,
in-process objects here, the cluster's actors in the ingress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError, EyeNetError, RequestError
from eyenet.models.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.monitoring.alerts import ALERT_KINDS
from eyenet.monitoring.exporter import MetricsSnapshot, render
from eyenet.serving.inference import InferenceService, LiveWindows, ScoreRequest, predict_devices
from eyenet.store import Store
from serve_app.api import jsonable

log = logging.getLogger(__name__)
ANOMALY_KINDS = ("anomaly",)
OPEN_ALERTS_LIMIT = 10_000  # open alerts of one kind counted from the store (a lower bound past it)


class StoreViews:
    """The read-only endpoints: models, devices, anomalies, reports, health, metrics.

    ``monitor`` (a :class:`eyenet.monitoring.monitor.Monitor`) and ``collectors``
    (:class:`eyenet.streaming.collector.Collector` objects) are the in-process live parts
    ``/metrics`` asks; none by default, so the monitor reads as down.
    """

    monitor: Any = None
    collectors: Sequence[Any] = ()

    def __init__(self, config: EyeNetConfig, store: Store, model_name: str = DEFAULT_MODEL_NAME) -> None:
        self.config, self.store, self.model_name = config, store, model_name
        self.registry = ModelRegistry(store, config.artifact_root)

    def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            self.store.ping()
            checks["store"] = "ok"
        except EyeNetError as exc:
            checks["store"] = f"unreachable: {exc}"
        try:
            production = self.registry.production(self.model_name)
            checks["production_model"] = production.version if production else "none"
        except EyeNetError as exc:
            checks["production_model"] = f"unknown: {exc}"
        ok = checks["store"] == "ok" and isinstance(checks["production_model"], int)
        return {"ok": ok, **checks}

    def models(self) -> list[dict[str, Any]]:
        return jsonable([v.to_dict() for v in self.registry.list(self.model_name)])

    def device_rows(self, states: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The store's devices; with ``states`` (device -> state under the served model)."""
        rows = [{"device_id": d.device_id, "n_samples": d.n_samples, "first_ts": d.first_ts,
                 "last_ts": d.last_ts} for d in self.store.list_devices()]
        if states is not None:
            for row in rows:
                row["state"] = states.get(row["device_id"], "learning")
        return jsonable(rows)

    def anomalies(self, device_id: str | None, limit: int) -> list[dict[str, Any]]:
        events = self.store.list_events(device_id=device_id, kind="anomaly", limit=limit)
        return jsonable([e.to_dict() for e in events])

    def report(self, since: str) -> dict[str, Any]:
        """From the monitor's saved snapshots; reads only. No Monitor is built here: its
        start-up recovers open alerts and may rewrite them, which a GET must never do."""
        from eyenet.monitoring.reports import build_report
        from eyenet.telemetry.timespec import parse_since

        now_s = time.time()
        try:
            since_s = parse_since(since, now_s)
        except ConfigError as exc:  # the caller's parameter, not the server's configuration
            raise RequestError(str(exc).replace("--since", "since", 1), "since") from exc
        return jsonable(build_report(self.store, since_s, now_s=now_s))

    def promote(self, version: int) -> dict[str, Any]:
        from eyenet.models.gates import promotion_gates

        mv = self.registry.promote(self.model_name, version, promotion_gates(self.config, self.registry))
        return jsonable(mv.to_dict())

    def rollback(self) -> dict[str, Any]:
        return jsonable(self.registry.rollback(self.model_name).to_dict())

    async def metrics_text(self) -> str:
        """EyeNet's own metrics in Prometheus' text format (:mod:`eyenet.monitoring.exporter`).
        Each part is asked on its own; one that fails is exported as down, never an error."""
        snapshot = MetricsSnapshot()
        await self.gather_live(snapshot)
        self.gather_stored(snapshot)
        return render(snapshot).decode()

    async def gather_live(self, snapshot: MetricsSnapshot) -> None:
        """The monitor's and the collectors' figures, from the in-process objects."""
        if self.monitor is None:
            snapshot.down("monitor")
        else:
            snapshot.monitor = snapshot.attempt("monitor", self.monitor.metrics)
        snapshot.components["collectors"] = True  # listing them cannot fail in-process
        for i, collector in enumerate(self.collectors):
            name = str(getattr(collector, "name", f"collector-{i}"))
            try:
                snapshot.collectors[name] = collector.stats()
            except Exception as exc:  # one collector failing is its eyenet_collector_up, not an error
                log.warning("metrics: collector %s unavailable: %s: %s", name, type(exc).__name__, exc)
                snapshot.collectors_down.append(name)

    def gather_stored(self, snapshot: MetricsSnapshot) -> None:
        """Store reachability, the production version, and (when the monitor did not answer)
        the open alerts the monitor last saved in the store."""
        snapshot.attempt("store", self.store.ping)
        production = snapshot.attempt("registry", lambda: self.registry.production(self.model_name))
        if snapshot.components.get("registry"):
            snapshot.production[self.model_name] = production.version if production else None
        if snapshot.monitor is None and snapshot.components.get("store"):
            snapshot.open_alerts = snapshot.attempt("store", lambda: {
                kind: len(self.store.list_events(kind=kind, status="open", limit=OPEN_ALERTS_LIMIT))
                for kind in ALERT_KINDS})


class LocalBackend(StoreViews):
    def __init__(self, config: EyeNetConfig, store: Store, service: InferenceService,
                 model_name: str = DEFAULT_MODEL_NAME, monitor: Any = None,
                 collectors: Sequence[Any] = ()) -> None:
        super().__init__(config, store, model_name)
        self.service = service
        self.monitor, self.collectors = monitor, list(collectors)
        self.windows = LiveWindows(store, service.detector)

    async def predict(self, device_id: str) -> dict[str, Any]:
        (result,), _ = predict_devices(self.service, self.windows, [device_id])
        if isinstance(result, RequestError):
            raise result
        return result

    async def score(self, request: ScoreRequest) -> list[dict[str, Any]]:
        return self.service.score(request)

    async def devices(self) -> list[dict[str, Any]]:
        ids = [d.device_id for d in self.store.list_devices()]
        return self.device_rows(self.service.device_states(ids))


__all__ = ["LocalBackend", "RequestError", "StoreViews"]
