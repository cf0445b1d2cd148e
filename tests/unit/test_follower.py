"""Following the production model: the follower core on a fake registry and clock, then
the three owners (feature actor, monitor actor, detector replica) as plain objects, no Ray."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from eyenet.errors import ArtifactIntegrityError, StoreConnectionError
from eyenet.models.follower import Followed, ProductionFollower
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from tests.helpers import Clock, wait_for
from tests.synthetic import METRICS, promoted_store, telemetry

FAST_S = 0.05


@dataclass
class _Version:
    version: int
    name: str = "m"


class FakeRegistry:
    def __init__(self, production: int | None = None) -> None:
        self.version, self.asked, self.down = production, 0, False

    def production(self, name: str) -> _Version | None:
        self.asked += 1
        if self.down:
            raise StoreConnectionError("store down")
        return None if self.version is None else _Version(self.version, name)


def follower(registry: FakeRegistry, clock: Clock, loads: list[int], fail: set[int] | None = None,
             interval_s: float = 10.0) -> ProductionFollower[str]:
    def load(version: int) -> str:
        if version in (fail or set()):
            raise ArtifactIntegrityError(f"v{version} does not match its manifest")
        loads.append(version)
        return f"model-{version}"

    return ProductionFollower.of_registry(registry, "m", load, interval_s, now_s=clock)


def test_polls_at_the_interval_and_loads_each_new_version_once():
    registry, clock, loads = FakeRegistry(1), Clock(100.0), []
    f = follower(registry, clock, loads)
    assert f.current is None
    assert f.poll() == Followed(1, "model-1")           # the first poll checks at once
    assert f.poll() is None and registry.asked == 1      # not due: the registry is not asked
    clock.now += 10
    assert f.poll() is None and registry.asked == 2      # due, unchanged: nothing loaded
    registry.version = 2
    clock.now += 9.9
    assert f.poll() is None and f.version == 1
    clock.now += 0.1
    assert f.poll() == Followed(2, "model-2")
    assert loads == [1, 2] and f.stats()["switches"] == 2


def test_a_rollback_is_followed_like_a_promotion():
    registry, clock, loads = FakeRegistry(1), Clock(), []
    f = follower(registry, clock, loads)
    f.check()
    registry.version = 2
    f.check()
    registry.version = 1
    assert f.check() == Followed(1, "model-1") and loads == [1, 2, 1]


def test_work_in_flight_keeps_the_model_it_started_with():
    registry, clock, loads = FakeRegistry(1), Clock(), []
    f = follower(registry, clock, loads)
    f.check()
    in_flight = f.current
    registry.version = 2
    f.check()
    assert in_flight == Followed(1, "model-1") and f.current == Followed(2, "model-2")


def test_a_failed_check_keeps_the_loaded_model_and_is_retried():
    registry, clock, loads = FakeRegistry(1), Clock(), []
    f = follower(registry, clock, loads, fail={2})
    f.check()
    registry.version = 2
    assert f.check() is None and f.version == 1
    assert "v2 does not match its manifest" in f.last_error and f.counts["errors"] == 1
    registry.down = True
    clock.now += 10
    assert f.poll() is None and f.version == 1 and "store down" in f.last_error
    registry.down, registry.version = False, 3
    clock.now += 10
    assert f.poll() == Followed(3, "model-3") and f.last_error is None


def test_refresh_raises_for_owners_that_cannot_start_without_a_model():
    registry, clock = FakeRegistry(1), Clock()
    registry.down = True
    with pytest.raises(StoreConnectionError):
        follower(registry, clock, []).refresh()


def test_no_production_version_loads_nothing_and_keeps_what_is_loaded():
    registry, clock, loads = FakeRegistry(None), Clock(), []
    f = follower(registry, clock, loads)
    assert f.check() is None and f.current is None
    registry.version = 4
    assert f.check().version == 4
    registry.version = None
    assert f.check() is None and f.version == 4


def test_a_pinned_version_is_kept_until_unpinned():
    registry, clock, loads = FakeRegistry(1), Clock(), []
    f = follower(registry, clock, loads)
    f.check()
    assert f.pin(5) == Followed(5, "model-5")
    registry.version = 2
    clock.now += 10
    assert f.poll() is None and f.version == 5
    f.pin(None)
    assert f.poll() == Followed(2, "model-2")


def test_switch_to_loads_a_version_and_keeps_following():
    registry, clock, loads = FakeRegistry(3), Clock(), []
    f = follower(registry, clock, loads)
    assert f.switch_to(2).version == 2
    assert f.check().version == 3


@pytest.mark.parametrize("interval", [0, -1, float("nan"), "5"])
def test_a_bad_poll_interval_is_refused_naming_it(interval):
    with pytest.raises(ValueError, match=r"poll_interval_s must be a number > 0, got"):
        ProductionFollower(lambda: 1, str, interval)


@pytest.mark.parametrize("version", [0, -2, "3", True, 1.5])
def test_a_bad_version_is_refused_naming_it(version):
    f = ProductionFollower(lambda: 1, str, 1.0)
    with pytest.raises(ValueError, match="model version must be an integer >= 1"):
        f.pin(version)


def test_follow_runs_until_stopped_and_survives_a_failing_hook():
    registry, loads, seen = FakeRegistry(1), [], []
    f = ProductionFollower.of_registry(registry, "m", lambda v: loads.append(v) or v, FAST_S)

    def hook(followed: Followed[int]) -> None:
        seen.append(followed.version)
        raise RuntimeError("owner bug")

    stop = f.start(on_switch=hook)
    try:
        wait_for(lambda: seen == [1], 10, "the first switch", poll_s=0.01)
        registry.version = 2
        wait_for(lambda: seen == [1, 2], 10, "the second switch", poll_s=0.01)
    finally:
        stop.set()
    assert f.counts["errors"] == 2 and f.version == 2


# -- the owners ------------------------------------------------------------------------------
def _promote_again(cfg, tmp_path, detector, name: str) -> int:
    registry = ModelRegistry(open_store(cfg.store_uri), cfg.artifact_root)
    mv = registry.register(detector.save(tmp_path / name))
    registry.promote(mv.name, mv.version)
    return mv.version


def test_the_monitor_actor_follows_production_from_before_any_model(tmp_path, detector):
    """Drift used to keep the reference the monitor started with (none, before a model)."""
    from actors.monitor import MonitorActor
    from eyenet.config import EyeNetConfig

    cfg = EyeNetConfig(metrics=METRICS, counter_metrics=[], store_uri=f"sqlite:///{tmp_path}/e.db",
                       artifact_root=str(tmp_path / "artifacts"), registry_poll_interval_s=FAST_S,
                       monitor={"check_interval_s": FAST_S})
    actor = MonitorActor(cfg.to_dict())
    try:
        assert actor.stats()["model_version"] is None
        registry = ModelRegistry(open_store(cfg.store_uri), cfg.artifact_root)
        v1 = _promote_again(cfg, tmp_path, detector, "v1")
        wait_for(lambda: actor.stats()["model_version"] == v1, 10, "the monitor to take v1", poll_s=0.02)
        assert actor.monitor.drift.reference == detector.reference
        v2 = _promote_again(cfg, tmp_path, detector, "v2")
        wait_for(lambda: actor.stats()["model_version"] == v2, 10, "the monitor to take v2", poll_s=0.02)
        registry.rollback()
        wait_for(lambda: actor.stats()["model_version"] == v1, 10, "the monitor to roll back", poll_s=0.02)
        assert actor.stats()["follower"]["errors"] == 0
    finally:
        actor.shutdown()


def test_the_feature_actor_scores_with_the_new_production_model(tmp_path, detector):
    from actors.features import FeatureActor

    cfg, _, mv, _ = promoted_store(tmp_path, detector, registry_poll_interval_s=FAST_S)
    actor = FeatureActor(cfg.to_dict())
    try:
        feed = telemetry(80, start_s=9000, seed=5, devices=("r1",))
        actor.score(feed.iloc[:40])
        assert actor.stats()["model_version"] == mv.version
        windows = actor.stats()["totals"]["windows"]
        v2 = _promote_again(cfg, tmp_path, detector, "v2")
        wait_for(lambda: actor.follower.version == v2, 10, "the pool's follower to load v2", poll_s=0.02)
        in_flight = actor.live
        result = actor.score(feed.iloc[40:])
        assert actor.stats()["model_version"] == v2 and actor.live is in_flight, "switched in place"
        # the buffered window moved over: the very next samples are scored, not relearned
        assert result["scored"] == 40 and actor.stats()["totals"]["windows"] - windows == 40
    finally:
        actor.stop()


def test_the_detector_replica_follows_through_the_same_follower(tmp_path, detector):
    from serve_app.deployments import DetectorReplica

    cfg, _, mv, _ = promoted_store(tmp_path, detector, registry_poll_interval_s=FAST_S)
    replica = DetectorReplica(cfg.to_dict())
    try:
        assert isinstance(replica.follower, ProductionFollower) and replica.model_version() == mv.version
        v2 = _promote_again(cfg, tmp_path, detector, "v2")
        wait_for(lambda: replica.model_version() == v2, 10, "the replica to take v2", poll_s=0.02)
    finally:
        replica._stop.set()
