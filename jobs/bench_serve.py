"""``eyenet bench serve --json``: the HTTP path, measured beside its floors, in one run.

Same load for every target: ``clients`` concurrent keep-alive clients (aiohttp, spread over
two load processes) for ``seconds`` each, after a short warm-up:

* ``bare``: the same FastAPI app and model in one uvicorn process, no Ray (the ceiling);
* ``noop``: a Ray Serve deployment that returns ``{}`` (Serve's own floor here);
* ``noop_chain``: a FastAPI ingress that awaits a second no-op deployment by handle, the
  shape of EyeNet's app (ingress -> batched detector) with no work: the floor of that hop;
* ``predict``: EyeNet's ``/v1/predict`` on Serve (store read + batched detector);
* ``score``: ``/v1/score`` with ``windows_per_request`` windows per request, reported as
  windows/s beside the model's own batched forward speed in-process (one thread).

The load generator shares the machine's two cores with the servers, so every figure is
bounded by it too; compare the ratios, which it affects alike.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI
from ray import serve

from eyenet.config import EyeNetConfig
from jobs._ray import free_port
from jobs.options import ServeBenchOptions, job_main, print_result

WARMUP_S = 2.0
LOAD_PROCESSES = 2


async def _clients(url: str, bodies: list[bytes] | None, clients: int, warmup_s: float,
                   seconds: float) -> tuple[list[float], int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json"}

    async def client(session: aiohttp.ClientSession, until: float, record: bool, i: int) -> None:
        nonlocal errors
        body = bodies[i % len(bodies)] if bodies else None
        while time.perf_counter() < until:
            started = time.perf_counter()
            call = session.post(url, data=body, headers=headers) if body is not None else session.get(url)
            async with call as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                elif record:
                    latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm_until = time.perf_counter() + warmup_s
        await asyncio.gather(*[client(session, warm_until, False, i) for i in range(clients)])
        until = time.perf_counter() + seconds
        await asyncio.gather(*[client(session, until, True, i) for i in range(clients)])
    return latencies, errors


def _load_process(args: tuple[str, list[bytes] | None, int, float, float]) -> tuple[list[float], int]:
    return asyncio.run(_clients(*args))


def _load(url: str, body: dict | list[dict] | None, clients: int, seconds: float,
          processes: int = LOAD_PROCESSES) -> dict[str, float]:
    """``clients`` keep-alive clients spread over ``processes`` load processes (aiohttp):
    the load generator must not share one interpreter with the Ray driver. With a list of
    bodies, client ``i`` of each process sends body ``i`` (cycling)."""
    import json
    import multiprocessing

    listed = body if isinstance(body, list) else [body]
    bodies = None if body is None else [json.dumps(b).encode() for b in listed]
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        shares = [bodies[k::processes] if bodies and len(bodies) >= processes else bodies
                  for k in range(processes)]
        parts = pool.map(_load_process,
                         [(url, shares[k], n, WARMUP_S, seconds) for k, n in enumerate(per) if n])
    ms = np.array([x for lat, _ in parts for x in lat]) * 1000
    errors = sum(e for _, e in parts)
    return {"requests_per_s": round(len(ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "requests": len(ms), "errors": errors}


class _NoopInner:
    async def ping(self) -> dict:
        return {}


_chain_app = FastAPI()


@serve.ingress(_chain_app)
class _NoopChain:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @_chain_app.get("/noop")
    async def noop(self) -> dict:
        return await self.inner.ping.remote()


def _bench_setup(tmp: Path) -> tuple[EyeNetConfig, Any, pd.DataFrame]:
    """A trained, promoted detector and 30 minutes of stored telemetry of 20 devices."""
    from eyenet.detection.detector import Detector
    from eyenet.models.registry import ModelRegistry
    from eyenet.sources.simulator import SimulatedSource
    from eyenet.store import open_store
    from eyenet.telemetry.validation import TelemetryValidator

    config = EyeNetConfig.from_dict({"store_uri": f"sqlite:///{tmp}/bench.db",
                                     "artifact_root": str(tmp / "a"), "detector": {"max_train_time_s": 20}})
    source = SimulatedSource(config, devices=20, seed=3)
    now = int(time.time() * 1000)
    raw = source.fetch(source.devices(), now - 1_800_000, now).samples
    history = TelemetryValidator(config).validate(raw)
    detector = Detector(config.detector, config.metrics, config.gap_s).fit(history.accepted)
    store = open_store(config.store_uri)
    store.write_samples(history.accepted)
    registry = ModelRegistry(store, config.artifact_root)
    mv = registry.register(detector.save(tmp / "model"))
    registry.promote(mv.name, mv.version)
    return config, detector, history.accepted


def _score_body(frame: pd.DataFrame, metrics: list[str], rows: int, windows: int) -> dict:
    values = frame[frame["device_id"] == "dev-0001"][metrics].tail(rows).to_numpy().tolist()
    return {"windows": [{"device_id": f"w{i}", "values": values} for i in range(windows)]}


def run_serve_bench(clients: int = 16, seconds: float = 15.0,
                    windows_per_request: int = 100) -> dict[str, Any]:
    import uvicorn

    from eyenet.serving.inference import InferenceService
    from eyenet.store import open_store
    from jobs._ray import ensure_ray
    from serve_app.api import create_app
    from serve_app.deployments import APP_NAME, build_app
    from serve_app.local import LocalBackend

    tmp = Path(tempfile.mkdtemp(prefix="eyenet-bench-serve-"))
    config, detector, frame = _bench_setup(tmp)
    rows = detector.config.window_steps + 1  # one forward window per request window
    # each client asks for its own device (predict scores window + smoothing rows of it)
    predict_body = [{"device_id": d} for d in sorted(frame["device_id"].unique())[:clients]]
    score_body = _score_body(frame, config.metrics, rows, windows_per_request)
    result: dict[str, Any] = {"clients": clients, "seconds": seconds,
                              "windows_per_request": windows_per_request}

    # bare: the same app and model in one process
    import torch

    torch.set_num_threads(1)
    port = free_port()
    backend = LocalBackend(config, open_store(config.store_uri), InferenceService(detector, 1))
    server = uvicorn.Server(uvicorn.Config(create_app(backend, api_key=""), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    bare_url = f"http://127.0.0.1:{port}/v1/predict"
    result["bare_predict"] = _load(bare_url, predict_body, clients, seconds)
    server.should_exit = True
    thread.join()

    ensure_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    noop_app = FastAPI()

    @noop_app.get("/noop")
    def noop() -> dict:
        return {}

    # the same concurrency limit as EyeNet's ingress, so only the work per request differs
    serve.run(serve.deployment(serve.ingress(noop_app)(type("Noop", (), {})), name="Noop",
                               max_ongoing_requests=config.serve.ingress_max_ongoing_requests).bind(),
              name="noop", route_prefix="/noop-app")
    result["noop"] = _load(f"http://127.0.0.1:{port}/noop-app/noop", None, clients, seconds)
    serve.delete("noop")
    # the floor of EyeNet's shape: a FastAPI ingress calling a second deployment by handle
    inner = serve.deployment(_NoopInner, name="NoopInner",
                             max_ongoing_requests=4 * config.serve.max_batch_size)
    serve.run(serve.deployment(_NoopChain, name="NoopChain",
                               max_ongoing_requests=config.serve.ingress_max_ongoing_requests).bind(inner.bind()),
              name="noop-chain", route_prefix="/noop-chain")
    result["noop_chain"] = _load(f"http://127.0.0.1:{port}/noop-chain/noop", None, clients, seconds)
    serve.delete("noop-chain")

    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    result["predict"] = _load(f"{base}/v1/predict", predict_body, clients, seconds)
    score = _load(f"{base}/v1/score", score_body, clients, seconds)
    result["score"] = {**score, "windows_per_s": round(score["requests_per_s"] * windows_per_request, 1)}
    serve.delete(APP_NAME)

    service = InferenceService(detector, 1)
    many = {"windows": score_body["windows"] * 10}
    from eyenet.serving.inference import ScoreRequest

    request = ScoreRequest.model_validate(many)
    started = time.perf_counter()
    service.score(request)
    elapsed = time.perf_counter() - started
    result["model_windows_per_s_in_process"] = round(len(request.windows) / elapsed, 1)
    result["predict_vs_noop"] = round(result["predict"]["requests_per_s"]
                                      / result["noop"]["requests_per_s"], 2)
    result["predict_vs_noop_chain"] = round(result["predict"]["requests_per_s"]
                                            / result["noop_chain"]["requests_per_s"], 2)
    result["predict_vs_bare"] = round(result["predict"]["requests_per_s"]
                                      / result["bare_predict"]["requests_per_s"], 2)
    return result


def main(config: EyeNetConfig, options: ServeBenchOptions) -> int:
    print_result(run_serve_bench(clients=options.clients, seconds=options.seconds), options.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ServeBenchOptions, main, prog="python -m jobs.bench_serve",
                              description=__doc__))
