"""Ray Serve deployments: the batched detector and the FastAPI ingress.

``Detector`` replicas load the production model from the registry, warm up with one
forward pass before taking traffic, batch concurrent scoring calls (``@serve.batch``:
``serve.max_batch_size`` windows' requests, waiting at most ``serve.batch_wait_timeout_s``,
set in each replica) and follow the registry's production model in place
(:class:`eyenet.models.follower.ProductionFollower`, as the feature pool and the monitor
do); ``reconfigure({"model_version": N})`` pins a version. ``check_health``
fails when the store is unreachable or no production model exists, so Serve replaces
the replica. ``/v1/predict`` reads each device's live window in the replica, for a whole
batch at once: from the pipeline's collectors when it runs (their recent-sample buffers),
else in one store read. The ingress serves :func:`serve_app.api.create_app` and forwards
scoring to the detector deployment through its handle; it holds up to
``serve.ingress_max_ongoing_requests`` requests, since Serve's default of 5 would cap
every detector batch at 5. Its ``/metrics`` asks the monitor actor and every pipeline
collector (named actors) per scrape, each within ``METRICS_TIMEOUT_S``, and reads the
store and the registry; a part that does not answer is exported as down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from ray import serve

from actors.collector import COLLECTOR_PREFIX, LiveCollectors
from actors.features import load_version, no_production_error
from eyenet.config import EyeNetConfig
from eyenet.errors import ConfigError, EyeNetError, RequestError, ServiceUnavailableError
from eyenet.models.follower import ProductionFollower
from eyenet.models.registry import DEFAULT_MODEL_NAME, ModelRegistry
from eyenet.monitoring.exporter import MetricsSnapshot
from eyenet.serving.inference import (
    BatchScores,
    CheckedWindows,
    InferenceService,
    LiveWindows,
    ScoreRequest,
    WindowChecker,
    predict_devices,
)
from eyenet.store import open_store
from eyenet.streaming.live import anomaly_points, batch_summary
from eyenet.telemetry.schema import ms_of
from serve_app.api import create_app
from serve_app.local import StoreViews

log = logging.getLogger(__name__)
APP_NAME = "eyenet"
MONITOR_LOOKUP_S = 10.0  # how often a replica without a monitor looks for one
# A call whose replica is lost is asked of another this many times more (see _answer)
LOST_REPLICA_RETRIES = 1
METRICS_TIMEOUT_S = 2.0  # each part's answer to a scrape (Prometheus' default timeout is 10 s)


class DetectorReplica:
    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)
        self.config = EyeNetConfig.from_dict(config)
        # in the replica, not the driver: each replica imports this module afresh, so
        # settings made on the class by whoever built the app never reach it
        self._set_batching(self.config.serve.max_batch_size, self.config.serve.batch_wait_timeout_s)
        self.store = open_store(self.config.store_uri)
        self.registry = ModelRegistry(self.store, self.config.artifact_root)
        self._monitor_handle: Any = None
        self._monitor_retry_at = 0.0
        self.collectors = LiveCollectors()
        # the registry's production model, followed in place as the pool and the monitor
        # follow it: a promotion or rollback reaches every replica within
        # registry_poll_interval_s, with no restart and no failed request (a request in
        # flight holds the (service, windows) pair it started with)
        self.follower = ProductionFollower.of_registry(self.registry, DEFAULT_MODEL_NAME, self._build,
                                                       self.config.registry_poll_interval_s)
        self.follower.refresh()
        if self.follower.current is None:
            raise no_production_error(DEFAULT_MODEL_NAME)
        self._stop = self.follower.start("replica-model-follower")

    def _build(self, version: int) -> tuple[InferenceService, LiveWindows]:
        detector = load_version(self.registry, DEFAULT_MODEL_NAME, version)
        if self.config.serve.num_gpus:
            detector.use_device("cuda")  # the GPU Ray gave this replica (CUDA_VISIBLE_DEVICES)
        service = InferenceService(detector, version, self.config.sample_interval_s, self.store)
        warm = pd.DataFrame({"device_id": "warmup",
                             "timestamp": pd.date_range("2024-01-01", periods=service.min_rows, freq="1s",
                                                        tz="UTC"),
                             **{m: 0.0 for m in detector.metrics}})
        service.score_frames([warm])  # the first forward pass is slow; pay it before traffic
        log.info("detector replica loaded model version %s", version)
        # one value: a batch must never see the new model with the old window length
        return service, LiveWindows(self.store, detector)

    @property
    def _serving(self) -> tuple[InferenceService, LiveWindows]:
        return self.follower.current.value

    @property
    def service(self) -> InferenceService:
        return self._serving[0]

    @property
    def pinned(self) -> int | None:
        return self.follower.pinned

    def _set_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        for method in (self._score_batch, self._predict_batch):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``{"model_version": N}`` pins a version (for a canary); ``None`` follows production.
        ``max_batch_size`` and ``batch_wait_timeout_s`` override ``serve``'s, checked as
        the config checks them."""
        unknown = sorted(set(user_config) - {"model_version", "max_batch_size", "batch_wait_timeout_s"})
        if unknown:
            raise ConfigError(f"user_config: unknown settings {unknown}; expected model_version, "
                              "max_batch_size, batch_wait_timeout_s", unknown[0], user_config[unknown[0]])
        batching = {k: user_config[k] for k in ("max_batch_size", "batch_wait_timeout_s") if k in user_config}
        if batching:
            settings = {**self.config.to_dict(), "serve": {**self.config.serve.model_dump(), **batching}}
            serve_opts = EyeNetConfig.from_dict(settings).serve
            self._set_batching(serve_opts.max_batch_size, serve_opts.batch_wait_timeout_s)
        version = user_config.get("model_version")
        try:
            self.follower.pin(None if version is None else int(version))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"user_config.model_version = {version!r}: {exc}", "model_version",
                              version, "an integer >= 1") from exc

    def check_health(self) -> None:
        """Fails (so Serve replaces the replica) when the store is unreachable or no
        production model exists."""
        self.store.ping()
        if self.registry.production() is None and self.pinned is None:
            raise EyeNetError("no production model in the registry")

    @serve.batch
    async def _score_batch(self, requests: list[CheckedWindows]) -> list[list[dict[str, Any]]]:
        combined = CheckedWindows.concat(requests)
        started = time.perf_counter()
        service = self.service  # a model switch mid-batch does not mix versions
        batch = service.score_batch(combined)
        self._tell_monitor(service, batch, (time.perf_counter() - started) * 1000.0)
        out, start = [], 0
        for request in requests:
            out.append(batch.predictions[start:start + len(request.names)])
            start += len(request.names)
        return out

    @serve.batch
    async def _predict_batch(self, device_ids: list[str]) -> list[dict[str, Any]]:
        """Live windows of the whole batch (from the collectors when the pipeline runs,
        else in one store read), scored in one pass."""
        started = time.perf_counter()
        service, windows = self._serving
        recent = await self.collectors.recent(device_ids)
        results, batch = predict_devices(service, windows, device_ids, recent)
        self._tell_monitor(service, batch, (time.perf_counter() - started) * 1000.0)
        # a refusal travels as data: the ingress turns it back into its 4xx
        return [{"refused": {"message": str(r), "field": r.field, "status": r.status}}
                if isinstance(r, RequestError) else r for r in results]

    def _tell_monitor(self, service: InferenceService, batch: BatchScores, latency_ms: float) -> None:
        """Latency, anomalies and drift counts of this batch to the monitor, fire-and-forget:
        the request path never waits for (or fails because of) the monitor."""
        monitor = self._monitor()
        if monitor is None or not batch.predictions:
            return
        try:
            detector = service.detector
            flagged = [p for p in batch.predictions if p["is_anomaly"]]
            anomalies = anomaly_points(detector, [p["device_id"] for p in flagged],
                                       [ms_of(p["timestamp"]) for p in flagged],
                                       [p["anomaly_score"] for p in flagged],
                                       [p["top_features"] for p in flagged])
            summary = batch_summary(detector, [p["device_id"] for p in batch.predictions], anomalies,
                                    batch.newest_features, latency_ms, len(batch.predictions),
                                    service.model_version, time.time(),
                                    [p["state"] == "learning" for p in batch.predictions],
                                    [p["anomaly_score"] for p in batch.predictions],
                                    [p["threshold"] for p in batch.predictions])
            monitor.record.remote(summary)
        except Exception as exc:  # monitoring is best effort; scoring already succeeded
            self._monitor_handle = None
            log.warning("could not report to the monitor: %s", exc)

    def _monitor(self) -> Any:
        now = time.monotonic()
        if self._monitor_handle is None and now >= self._monitor_retry_at:
            self._monitor_retry_at = now + MONITOR_LOOKUP_S
            from actors.monitor import find_monitor

            self._monitor_handle = find_monitor()
        return self._monitor_handle

    async def score(self, checked: CheckedWindows) -> list[dict[str, Any]] | dict[str, Any]:
        # the ingress checked against the model it last heard of; after a switch to a model
        # with other metrics or a longer window, refuse here rather than fail in the batch
        service = self.service
        metrics = service.detector.metrics
        if checked.values.shape[1] != len(metrics) or min(checked.lengths) < service.min_rows:
            return {"refused": {"message": f"the production model (v{service.model_version}) scores "
                                           f"{metrics} over at least {service.min_rows} "
                                           "rows; the request was checked against another model, retry",
                                "field": "windows", "status": 409}}
        return await self._score_batch(checked)

    def describe(self) -> dict[str, Any]:
        """What the ingress checks windows against: the loaded model's metrics and window."""
        service = self.service
        return {"metrics": list(service.detector.metrics), "min_rows": service.min_rows,
                "model_version": service.model_version}

    async def predict(self, device_id: str) -> dict[str, Any]:
        return await self._predict_batch(device_id)

    def device_states(self, device_ids: list[str]) -> dict[str, str]:
        return self.service.device_states(device_ids)

    def model_version(self) -> int | None:
        return self.service.model_version

    def batch_settings(self) -> dict[str, Any]:
        """The batch size and wait this replica's batchers run with (to check the config
        reached it: each replica imports this module afresh)."""
        # Serve exposes only private getters on a batched method (the setters are public)
        return {name: {"max_batch_size": method._get_max_batch_size(),
                       "batch_wait_timeout_s": method._get_batch_wait_timeout_s()}
                for name, method in (("score", self._score_batch), ("predict", self._predict_batch))}


class IngressBackend(StoreViews):
    """The API's backend inside the ingress replica: reads from the store, scores remotely."""

    def __init__(self, config: EyeNetConfig, detector_handle: Any) -> None:
        super().__init__(config, open_store(config.store_uri))
        self.detector = detector_handle
        # requests are checked here, so a bad one never costs a detector replica anything;
        # against the served model's metrics and window, asked of the detector deployment
        self.checker: WindowChecker | None = None
        self._monitor_handle: Any = None

    async def predict(self, device_id: str) -> dict[str, Any]:
        return _accepted(await _answer(lambda: self.detector.predict.remote(device_id)))

    async def devices(self) -> list[dict[str, Any]]:
        ids = [d.device_id for d in self.store.list_devices()]
        return self.device_rows(await _answer(lambda: self.detector.device_states.remote(ids)))

    async def score(self, request: ScoreRequest) -> list[dict[str, Any]]:
        if self.checker is None:
            await self._describe()
        checked = self.checker.check(request)
        result = await _answer(lambda: self.detector.score.remote(checked))
        if isinstance(result, dict):  # refused: the model changed; check against the new one next
            await self._describe()
        return _accepted(result)

    async def _describe(self) -> None:
        model = await _answer(lambda: self.detector.describe.remote())
        self.checker = WindowChecker(model["metrics"], model["min_rows"], self.config.sample_interval_s)

    async def gather_live(self, snapshot: MetricsSnapshot) -> None:
        """The monitor actor's figures and the stats of every pipeline collector, asked at once."""
        await asyncio.gather(self._monitor_figures(snapshot), self._collector_figures(snapshot))

    async def _monitor_figures(self, snapshot: MetricsSnapshot) -> None:
        from actors.monitor import find_monitor

        try:
            if self._monitor_handle is None:
                self._monitor_handle = find_monitor()
            if self._monitor_handle is None:  # no pipeline has started one: down, nothing to log
                snapshot.down("monitor")
                return
            answer = self._monitor_handle.metrics.remote()
            snapshot.monitor = await asyncio.wait_for(answer, METRICS_TIMEOUT_S)
            snapshot.components["monitor"] = True
        except Exception as exc:  # dead, restarting, slow, or older than metrics(): look it up anew
            self._monitor_handle = None
            snapshot.down("monitor", exc)

    async def _collector_figures(self, snapshot: MetricsSnapshot) -> None:
        """Collectors are labelled by actor name less ``COLLECTOR_PREFIX`` (it holds the
        pipeline's run id, so two pipelines' collectors never share a label)."""
        import ray

        from actors.monitor import NAMESPACE

        try:
            names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                           if a["namespace"] == NAMESPACE and a["name"].startswith(COLLECTOR_PREFIX))
        except Exception as exc:
            snapshot.down("collectors", exc)
            return
        snapshot.components["collectors"] = True

        async def stats(name: str) -> dict[str, Any]:
            return await ray.get_actor(name, namespace=NAMESPACE).stats.remote()

        answers = await asyncio.gather(*[asyncio.wait_for(stats(n), METRICS_TIMEOUT_S) for n in names],
                                       return_exceptions=True)
        for name, answer in zip(names, answers, strict=True):
            label = name.removeprefix(COLLECTOR_PREFIX)
            if isinstance(answer, BaseException):  # stopped or restarting: its eyenet_collector_up 0
                log.info("metrics: collector %s did not answer: %s", label, answer)
                snapshot.collectors_down.append(label)
            else:
                snapshot.collectors[label] = answer


async def _answer(call: Callable[[], Any]) -> Any:
    """A detector replica's answer to ``call()`` (a handle call; every one is a read, so it
    may be made twice). A replica lost while answering (killed, its node gone) is asked of
    another once more: the handle's router only learns of the loss from the failed call,
    so a request sent just after a kill would otherwise fail too (the chaos soak: a 503
    started 0.4 s after its replica was killed). A second loss, or a replica shedding load,
    is a ServiceUnavailableError, which the API answers 503 with Retry-After."""
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError

    for attempt in range(1 + LOST_REPLICA_RETRIES):
        try:
            return await call()
        except (ray_errors.RayActorError, ray_errors.ActorUnavailableError) as exc:
            if attempt == LOST_REPLICA_RETRIES:
                raise ServiceUnavailableError(f"the detector replica was lost while answering "
                                              f"({type(exc).__name__}); retry", retry_after_s=1) from None
            log.info("a detector replica was lost while answering (%s); asking another", type(exc).__name__)
        except BackPressureError:
            raise ServiceUnavailableError("the detector replicas are at capacity; retry",
                                          retry_after_s=1) from None


def _accepted(result: Any) -> Any:
    """A detector replica's answer, or its refusal (sent as data) raised as the 4xx it is."""
    if isinstance(result, dict) and "refused" in result:
        refused = result["refused"]
        raise RequestError(refused["message"], refused["field"], status=refused["status"])
    return result


class _BackendSlot:
    """Stands in for the backend while the module-level FastAPI app is built; the ingress
    replica fills it in ``__init__`` (Serve needs the app before the replica exists). The
    backend is a class attribute: Serve ships the app to the replica by value, so the
    instance it calls is a copy, while the class is imported and shared."""

    target: Any = None
    max_body_bytes: int | None = None

    def __getattr__(self, name: str) -> Any:
        target = type(self).target
        if target is None:
            raise EyeNetError("the ingress replica is still starting")
        return getattr(target, name)


fastapi_app = create_app(_BackendSlot())


@serve.ingress(fastapi_app)
class Ingress:
    def __init__(self, detector_handle: Any, config: dict[str, Any]) -> None:
        cfg = EyeNetConfig.from_dict(config)
        _BackendSlot.target = IngressBackend(cfg, detector_handle)
        _BackendSlot.max_body_bytes = cfg.serve.max_body_bytes


def build_app(config: EyeNetConfig) -> Any:
    """The Serve application: ingress → batched detector, options from ``config.serve``."""
    opts = config.serve
    detector = serve.deployment(
        DetectorReplica, name="Detector", max_ongoing_requests=4 * opts.max_batch_size,
        autoscaling_config={"min_replicas": max(1, opts.min_replicas), "max_replicas": opts.max_replicas,
                            "target_ongoing_requests": opts.target_ongoing_requests,
                            "upscale_delay_s": opts.upscale_delay_s,
                            "downscale_delay_s": opts.downscale_delay_s,
                            "look_back_period_s": opts.look_back_period_s},
        ray_actor_options={"num_cpus": opts.replica_cpus, "num_gpus": opts.num_gpus},
        health_check_period_s=10)
    ingress = serve.deployment(Ingress, name="Ingress",
                               max_ongoing_requests=opts.ingress_max_ongoing_requests,
                               ray_actor_options={"num_cpus": 0.1})
    return ingress.bind(detector.bind(config.to_dict()), config.to_dict())


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve deploy serve_app/serve_config.yaml``: ``args.config`` names the EyeNet
    config file (default: ``$EYENET_CONFIG`` or built-in defaults plus ``EYENET_*``)."""
    from eyenet.config import load_config

    return build_app(load_config(args.get("config")))
