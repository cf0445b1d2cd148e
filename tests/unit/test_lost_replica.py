"""A detector replica lost mid-request is a 503 with Retry-After, never a 500 (Ray-free:
the ingress's backend is driven with a handle whose replica dies)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from ray import exceptions as ray_errors

from eyenet.errors import ServiceUnavailableError
from serve_app.api import create_app
from serve_app.deployments import IngressBackend
from tests.synthetic import make_config


class _Method:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def remote(self, *_args, **_kwargs):
        async def lost():
            raise self.error
        return lost()


class LostReplica:
    """A detector deployment handle whose every call dies with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.predict = self.score = self.describe = self.device_states = _Method(error)


@pytest.mark.parametrize("error", [ray_errors.ActorDiedError(),
                                   ray_errors.ActorUnavailableError("gone", None)])
def test_a_replica_lost_while_predicting_is_a_503_with_retry_after(tmp_path, error):
    backend = IngressBackend(make_config(tmp_path), LostReplica(error))
    with pytest.raises(ServiceUnavailableError, match="lost while answering"):
        asyncio.run(backend.predict("r1"))
    reply = TestClient(create_app(backend)).post("/v1/predict", json={"device_id": "r1"})
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert type(error).__name__ in reply.json()["detail"]


def test_a_fault_inside_the_replica_is_not_taken_for_a_lost_one(tmp_path):
    # an error the replica raised and sent back (RayTaskError) is a genuine fault: not a retry
    backend = IngressBackend(make_config(tmp_path), LostReplica(ValueError("bug")))
    with pytest.raises(ValueError, match="bug"):
        asyncio.run(backend.predict("r1"))


class _FailsOnce:
    """A handle method whose first call lands on a replica that was just killed; the next
    call goes to a live replica."""

    def __init__(self, error: Exception, answer: dict) -> None:
        self.error, self.answer, self.calls = error, answer, 0

    def remote(self, *_args, **_kwargs):
        self.calls += 1
        first = self.calls == 1

        async def call():
            if first:
                raise self.error
            return self.answer
        return call()


def test_a_request_whose_replica_was_just_lost_is_answered_by_another(tmp_path):
    """Regression: the handle's router learns of a killed replica only from a failed call,
    so a request sent just after the kill failed (the chaos soak: one 503, started 0.4 s
    after the kill). The ingress asks another replica once; only a second loss is a 503."""
    answer = {"device_id": "r1", "is_anomaly": False}
    handle = LostReplica(ray_errors.ActorDiedError())
    handle.predict = _FailsOnce(ray_errors.ActorDiedError(), answer)
    backend = IngressBackend(make_config(tmp_path), handle)
    assert asyncio.run(backend.predict("r1")) == answer
    assert handle.predict.calls == 2
