"""A short run of ``eyenet bench chaos`` on the session's Ray: with a collector, a feature
actor, a Serve detector replica and the monitor killed and the store locked, one at a time
under HTTP load, nothing is lost or doubled and every component comes back.

Named to run after test_cluster_autoscaling.py, whose fake cluster must start before the
session's Ray does (tests/fake_cluster.py); a module before it broke that test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobs.bench_chaos import FAULTS, run_chaos
from tests.helpers import wait_for
from tests.synthetic import make_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture
def no_monitor() -> Iterator[None]:
    """The soak kills the cluster's monitor, so it runs where none is left from another test."""
    import ray

    from actors.monitor import find_monitor

    def gone() -> bool:
        monitor = find_monitor()
        if monitor is not None:
            ray.kill(monitor, no_restart=True)
        return find_monitor() is None

    wait_for(gone, 30, "an earlier test's monitor to go")
    yield
    wait_for(gone, 30, "the soak's monitor to go")


def test_a_short_chaos_soak_loses_nothing_and_every_component_comes_back(tmp_path, no_monitor):
    # five faults, one of each kind (the first round of the seeded schedule), 12 s apart or
    # as soon as the one before has recovered
    result = run_chaos(make_config(tmp_path), minutes=1.1, devices=60, clients=4, requests_per_s=10,
                       fault_every_s=12, store_outage_s=4, seed=0, faults=len(FAULTS))
    assert result["faults_by_kind"] == {kind: 1 for kind in FAULTS}, result["faults"]
    assert result["faults_not_recovered"] == 0, result["faults"]
    assert result["samples_generated"] > 0
    assert (result["samples_lost"], result["samples_duplicated"]) == (0, 0)
    assert result["samples_stored"] == result["samples_generated"]
    # each incident: found, one anomaly event and one alert (a restart split none in two)
    assert result["incidents"] >= 2
    assert all(r["found"] and r["events"] == 1 and r["alerts"] == 1 for r in result["per_incident"]), \
        result["per_incident"]
    # a quiet device's alert, if any, is the model's own: the offline detector flags it too
    assert result["quiet_devices_alerting_not_flagged_offline"] == [], result["false_alerts"]
    assert result["http_requests"] > 0
    assert result["http_failed_otherwise"] == 0, result["http_failed_otherwise_examples"]
    assert set(result["http_failed_by_status"]) <= {"503"}
