"""The HTTP API (FastAPI), independent of how scoring is done.

:func:`create_app` takes a *backend*, the object that scores and reads: in Ray Serve it
is the ingress deployment (which forwards scoring to the batched detector deployment);
in unit tests a plain object around :class:`eyenet.serving.inference.InferenceService`. Routes,
authentication, body limits and error mapping live here once.

Errors: a refused request is a 4xx whose ``detail`` names the field; nothing reaches the
client as a 500 except a genuine server fault, logged without secrets.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from eyenet.errors import (
    EyeNetError,
    ModelNotFoundError,
    PromotionRejectedError,
    RegistryError,
    RequestError,
    ServiceUnavailableError,
    StoreError,
)
from eyenet.monitoring.exporter import CONTENT_TYPE_LATEST
from eyenet.serving.inference import Prediction, PredictRequest, ScoreRequest

log = logging.getLogger(__name__)
API_KEY_ENV = "EYENET_API_KEY"
ADMIN_KEY_ENV = "EYENET_ADMIN_KEY"  # promote and rollback: a read-only client cannot change production
COMPONENTS = "#/components/schemas/"


class Backend(Protocol):
    async def predict(self, device_id: str) -> dict[str, Any]: ...
    async def score(self, request: ScoreRequest) -> list[dict[str, Any]]: ...
    def health(self) -> dict[str, Any]: ...
    def models(self) -> list[dict[str, Any]]: ...
    async def devices(self) -> list[dict[str, Any]]: ...
    def anomalies(self, device_id: str | None, limit: int) -> list[dict[str, Any]]: ...
    def report(self, since: str) -> dict[str, Any]: ...
    def promote(self, version: int) -> dict[str, Any]: ...
    def rollback(self) -> dict[str, Any]: ...
    async def metrics_text(self) -> str: ...


class ErrorBody(BaseModel):
    """Every refusal: what was wrong, and which field (``windows[0].values[2]``)."""

    detail: str
    field: str | None = None
    reasons: list[str] | None = Field(None, description="a refused promotion's gate failures")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "malformed JSON or a parameter out of range", 401: "missing or wrong API key",
            403: "a read-only key (or no admin key configured): promote and rollback need the admin key",
            404: "unknown device or model version", 409: "not possible in the current state",
            413: "body over the size limit", 422: "a field fails validation (named in 'field')",
            503: "the store or the model is unavailable"}
    return {status: {"model": ErrorBody, "description": text[status]} for status in statuses}


COMMON_ERRORS = (400, 401, 413, 422, 503)
BEARER = HTTPBearer(auto_error=False)
LIMIT_QUERY = Query(100, ge=1, le=10_000, description="newest events first, at most this many")
SINCE_QUERY = Query("1h", description="a duration before now (30s, 15m, 1h, 2d, 1w) or an ISO 8601 time")
BEARER_DEPENDENCY = Depends(BEARER)


def _bearer_guard(api_key: str | None) -> Callable[..., Awaitable[None]]:
    async def guard(credentials: HTTPAuthorizationCredentials | None = BEARER_DEPENDENCY) -> None:
        if not api_key:
            return
        given = credentials.credentials if credentials is not None else ""
        # constant-time: the comparison must not reveal how much of a guess was right
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError("missing or wrong API key: send 'Authorization: Bearer <key>'",
                               "Authorization", status=401)

    return guard


def _scrape_guard(api_key: str | None, admin_key: str | None) -> Callable[..., Awaitable[None]]:
    """``/metrics``: no key needed, but a key that is sent must be a right one (a scraper
    with a stale credential should see 401, not be served as if it had sent none). The
    header is read from the request, not through ``HTTPBearer``, so that the OpenAPI spec
    does not declare the route as needing a key."""

    async def guard(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None or not (api_key or admin_key):
            return
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        if not any(key and hmac.compare_digest(given, key.encode()) for key in (api_key, admin_key)):
            raise RequestError("wrong key: /metrics needs none, but one sent must be the API key",
                               "Authorization", status=401)

    return guard


def _admin_guard(api_key: str | None, admin_key: str | None) -> Callable[..., Awaitable[None]]:
    async def guard(credentials: HTTPAuthorizationCredentials | None = BEARER_DEPENDENCY) -> None:
        if not api_key and not admin_key:
            return  # an open API (loopback, no keys): everything is allowed, as everything is readable
        given = credentials.credentials if credentials is not None else ""
        if admin_key and hmac.compare_digest(given.encode(), admin_key.encode()):
            return
        if api_key and hmac.compare_digest(given.encode(), api_key.encode()):
            # known, but only allowed to read
            why = ("this key only reads: promote and rollback need the admin key" if admin_key else
                   f"changing the production model over HTTP needs an admin key: set {ADMIN_KEY_ENV} "
                   f"where the API runs ({API_KEY_ENV} only reads)")
            raise RequestError(why, "Authorization", status=403)
        raise RequestError("missing or wrong admin key: send 'Authorization: Bearer <admin key>'",
                           "Authorization", status=401)

    return guard


def create_app(backend: Backend, max_body_bytes: int = 1_000_000, api_key: str | None = None,
               admin_key: str | None = None) -> FastAPI:
    """The FastAPI app; ``api_key`` defaults to ``$EYENET_API_KEY`` (unset: no auth) and
    ``admin_key``, which alone may promote or roll back, to ``$EYENET_ADMIN_KEY``."""
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    admin_key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV) or None
    app = FastAPI(title="EyeNet", version="1", description="Anomaly scores for network-device telemetry")
    auth = [Depends(_bearer_guard(api_key))]
    admin = [Depends(_admin_guard(api_key, admin_key))]
    scrape = [Depends(_scrape_guard(api_key, admin_key))]

    app.add_middleware(BodyLimit, limit=lambda: getattr(backend, "max_body_bytes", None) or max_body_bytes)

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _field_path(first["loc"])
        if first["type"] == "json_invalid":
            return _error(400, f"body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                          "body")
        return _error(422, f"{field}: {first['msg']}", field)

    @app.exception_handler(PromotionRejectedError)
    async def rejected(_: Request, exc: PromotionRejectedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "field": "version", "reasons": exc.reasons}, status_code=409)

    @app.exception_handler(ModelNotFoundError)
    async def no_model(_: Request, exc: ModelNotFoundError) -> JSONResponse:
        return _error(404, str(exc), "version")

    @app.exception_handler(RegistryError)
    async def registry_refused(_: Request, exc: RegistryError) -> JSONResponse:
        return _error(409, str(exc), "version")

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: StoreError) -> JSONResponse:
        log.warning("store error: %s", exc)
        return _error(503, "the store is unavailable", "store")

    @app.exception_handler(ServiceUnavailableError)
    async def lost_replica(_: Request, exc: ServiceUnavailableError) -> JSONResponse:
        log.warning("request lost a replica: %s", exc)
        response = _error(503, str(exc), None)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(EyeNetError)
    async def eyenet_error(_: Request, exc: EyeNetError) -> JSONResponse:
        log.warning("request failed: %s", exc)
        return _error(503, str(exc), None)

    @app.get("/v1/health", responses=_errors(503))
    def health() -> JSONResponse:
        status = backend.health()
        return JSONResponse(status, status_code=200 if status.get("ok") else 503)

    @app.post("/v1/predict", response_model=Prediction, dependencies=auth,
              responses=_errors(*COMMON_ERRORS, 404, 409))
    async def predict(body: PredictRequest) -> Response:
        return _json(await backend.predict(body.device_id))

    @app.post("/v1/score", response_model=list[Prediction], dependencies=auth,
              responses=_errors(*COMMON_ERRORS),
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": f"{COMPONENTS}ScoreRequest"}}}}})
    async def score(request: Request) -> Response:
        # pydantic parses and validates the raw bytes in one pass: about 7x faster than
        # FastAPI's json.loads + validate for a 100-window body, the bulk of this endpoint
        try:
            body = ScoreRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
        return _json(await backend.score(body))

    @app.get("/v1/models", dependencies=auth, responses=_errors(*COMMON_ERRORS))
    def models() -> list[dict[str, Any]]:
        return backend.models()

    @app.post("/v1/models/{version}/promote", dependencies=admin,
              responses=_errors(*COMMON_ERRORS, 403, 404, 409))
    def promote(version: int) -> dict[str, Any]:
        """Run the promotion gate, then make ``version`` production; replicas follow in place."""
        return backend.promote(version)

    @app.post("/v1/models/rollback", dependencies=admin, responses=_errors(*COMMON_ERRORS, 403, 404, 409))
    def rollback() -> dict[str, Any]:
        return backend.rollback()

    @app.get("/v1/devices", dependencies=auth, responses=_errors(*COMMON_ERRORS))
    async def devices() -> list[dict[str, Any]]:
        """Devices the store holds samples of, each with its state under the served model:
        ``judged``, or ``learning`` (never seen in training, still learning its scale)."""
        return await backend.devices()

    @app.get("/v1/anomalies", dependencies=auth, responses=_errors(*COMMON_ERRORS))
    def anomalies(device_id: str | None = None, limit: int = LIMIT_QUERY) -> list[dict[str, Any]]:
        return backend.anomalies(device_id, limit)

    @app.get("/v1/report", dependencies=auth, responses=_errors(*COMMON_ERRORS))
    def report(since: str = SINCE_QUERY) -> dict[str, Any]:
        return backend.report(since)

    @app.get("/metrics", dependencies=scrape, response_class=Response,
             responses={200: {"description": "Prometheus text exposition",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                        **_errors(401, 503)})
    async def metrics() -> Response:
        """EyeNet's own metrics for Prometheus: per-device scores, thresholds, states and
        anomaly points, open alerts by kind, collector counts by reason, scoring latency,
        drift and the production model version (names in the README).

        Auth: none needed, like ``/v1/health``, since Prometheus scrapes without a key by
        default. With ``EYENET_API_KEY`` set a scraper may send ``Authorization: Bearer
        <key>`` (the API or the admin key); a wrong key is refused with 401. The body holds
        device ids and scores, not keys; keep the port off untrusted networks if those
        are confidential. A part that is down is exported as ``eyenet_component_up 0``,
        never a 5xx."""
        return Response(await backend.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The generated spec plus the score body's schema, which the route reads itself."""
        if app.openapi_schema is None:
            spec = base_openapi()
            schema = ScoreRequest.model_json_schema(ref_template=COMPONENTS + "{model}")
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["ScoreRequest"] = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _json(content: Any) -> Response:
    """Scoring results, built by our code from checked values, serialised once (FastAPI's
    response_model pass would validate them again; the model still documents them)."""
    return Response(json.dumps(content, allow_nan=False), media_type="application/json")


class BodyLimit:
    """413 for a body over the limit: at once by its Content-Length, and while it streams
    for a chunked one. Plain ASGI: Starlette's ``BaseHTTPMiddleware`` costs about a
    millisecond per request, a sizeable share of a no-op Serve request."""

    def __init__(self, app: Any, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _error(413, f"request body of {int(length)} bytes exceeds the limit of {limit}",
                         "body")(scope, receive, send)
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # raised inside the route: the RequestError handler answers
                raise RequestError(f"request body exceeds the limit of {limit} bytes", "body", status=413)
            return message

        await self.app(scope, counted, send)


def _field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's ``("body", "windows", 0, "values", 2)`` as ``windows[0].values[2]``, the
    form the API's own checks use (``("query", "limit")`` as ``limit``)."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("float", "none"):  # union branches pydantic names, not fields
            path += f".{part}" if path else str(part)
    return path or "body"


def _error(status: int, message: str, field: str | None) -> JSONResponse:
    return JSONResponse({"detail": message, "field": field}, status_code=status)


def jsonable(value: Any) -> Any:
    """Datetimes and numpy scalars as JSON-friendly values."""
    return json.loads(json.dumps(value, default=str))
