"""The device sources against the real snmpd, node_exporter and Prometheus that `.ci/run`
starts (tests/components.py): polled through a collector into the store, rates that follow
traffic generated on loopback, an agent restart, v3 credentials, PromQL errors."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import uvicorn

from eyenet.monitoring.monitor import Monitor, ScoreSummary
from eyenet.sources.devices import DeviceSource
from eyenet.store import open_store
from eyenet.streaming.collector import Collector
from eyenet.telemetry.schema import to_ms
from serve_app.api import create_app
from serve_app.local import StoreViews
from tests.helpers import ListSink, free_port, wait_for
from tests.synthetic import make_config

pytestmark = pytest.mark.integration

TRAFFIC_BYTES = 400 * 2**20   # far above what else crosses loopback in the seconds a test takes


def agent(components, **spec):
    host, port = components.snmp_addr.rsplit(":", 1)
    return {"host": host, "port": int(port), "timeout_s": 1.0, "retries": 1, **spec}


@pytest.fixture
def credentials(components, monkeypatch):
    monkeypatch.setenv("T_SNMP_COMMUNITY", components.snmp_community)
    monkeypatch.setenv("T_SNMP_AUTH", components.snmp_v3_auth)
    monkeypatch.setenv("T_SNMP_PRIV", components.snmp_v3_priv)
    monkeypatch.setenv("T_SNMP_WRONG", "wrong-passphrase")


def collect(tmp_path, devices, name="real"):
    """A collector of these devices into a fresh store (with ``name``)."""
    # a poll waits for its slowest device (a wrong key times out), so gaps are judged at 5 s
    config = make_config(tmp_path, devices=devices, sample_interval_s=5.0,
                         streaming={"retry_initial_s": 0.2, "retry_max_s": 1.0})
    source = DeviceSource(config)
    store = open_store(config.store_uri)
    return Collector(config, source, store, source.devices(), name), store


def loopback_traffic(n_bytes: int) -> None:
    """Send ``n_bytes`` over a TCP connection on 127.0.0.1 (counted on ``lo`` in and out)."""
    server = socket.create_server(("127.0.0.1", 0))
    received = []

    def drain():
        conn, _ = server.accept()
        with conn:
            total = 0
            while chunk := conn.recv(1 << 20):
                total += len(chunk)
            received.append(total)

    thread = threading.Thread(target=drain)
    thread.start()
    with socket.create_connection(server.getsockname()) as client:
        block = b"\0" * (1 << 20)
        for _ in range(n_bytes // len(block)):
            client.sendall(block)
    thread.join()
    server.close()
    assert received == [n_bytes]


def counted_bytes(store, device, metric, after_ms):
    """Bytes the stored rates account for after ``after_ms``: rate x interval, summed."""
    frame = store.read_range(None, None)
    frame = frame[frame["device_id"] == device]
    ms = to_ms(frame["timestamp"]).to_numpy()
    rates = frame[metric].to_numpy()
    dt_s = np.diff(ms, prepend=ms[0]) / 1000.0
    keep = (ms > after_ms) & np.isfinite(rates)
    return float(np.sum(rates[keep] * dt_s[keep]))


def stored_rows(store) -> int:
    return len(store.read_range(None, None))


def poll_until(collector, condition, what, timeout_s=40.0):
    def step():
        collector.poll()
        return condition()
    return wait_for(step, timeout_s, what, poll_s=0.5)


def send_traffic_until_counted(collector, store, first_rows: int) -> int:
    """Poll until ``first_rows`` are stored, send TRAFFIC_BYTES over loopback, poll until
    device ``lo``'s stored bytes_in rates account for them; the cursor before the traffic."""
    poll_until(collector, lambda: stored_rows(store) >= first_rows, "first samples")
    before_ms = collector.cursor_ms["lo"]
    loopback_traffic(TRAFFIC_BYTES)
    # snmpd refreshes its interface table every few seconds: wait for the counters to move
    poll_until(collector, lambda: counted_bytes(store, "lo", "bytes_in", before_ms) >= TRAFFIC_BYTES,
               "the stored bytes_in rates to account for the traffic")
    return before_ms


def test_snmp_v2c_rates_follow_traffic_generated_on_loopback(tmp_path, components, credentials):
    collector, store = collect(tmp_path, [
        {"id": "lo", "snmp": agent(components, community_env="T_SNMP_COMMUNITY", interface="lo")},
        {"id": "agent", "snmp": agent(components, community_env="T_SNMP_COMMUNITY")},
        {"id": "no-such-if", "snmp": agent(components, community_env="T_SNMP_COMMUNITY", interface="eth99")}])
    try:
        before_ms = send_traffic_until_counted(collector, store, first_rows=2)
    finally:
        collector.source.close()
    for device in ("lo", "agent"):
        for metric in ("bytes_in", "bytes_out"):
            counted = counted_bytes(store, device, metric, before_ms)
            assert TRAFFIC_BYTES <= counted <= 1.25 * TRAFFIC_BYTES, (device, metric, counted)
    assert counted_bytes(store, "lo", "packets_in", before_ms) >= TRAFFIC_BYTES / 65536
    failing = collector.stats()["failing_devices"]
    assert list(failing) == ["no-such-if"]
    error = failing["no-such-if"]["error"]
    assert "no interface 'eth99' (has " in error and "lo" in error


def test_an_agent_without_if_mib_is_that_devices_error(tmp_path, components, monkeypatch):
    from jobs.snmp_agents import system_only_community

    monkeypatch.setenv("T_SNMP_SYSTEM", system_only_community(components.snmp_community))
    collector, store = collect(tmp_path, [
        {"id": "no-if-mib", "snmp": agent(components, community_env="T_SNMP_SYSTEM")}])
    try:
        poll_until(collector, lambda: "no-if-mib" in collector.stats()["failing_devices"],
                   "the poll to fail")
    finally:
        collector.source.close()
    error = collector.stats()["failing_devices"]["no-if-mib"]["error"]
    assert "no IF-MIB interface counters" in error and components.snmp_community not in error
    assert stored_rows(store) == 0


def test_snmp_v3_auth_priv_polls_and_wrong_keys_fail_without_showing_them(tmp_path, components,
                                                                          credentials):
    v3 = {"version": "3", "user": components.snmp_v3_user, "auth_key_env": "T_SNMP_AUTH",
          "priv_key_env": "T_SNMP_PRIV"}
    collector, store = collect(tmp_path, [
        {"id": "v3", "snmp": agent(components, **v3)},
        {"id": "v3-wrong-auth", "snmp": agent(components, **{**v3, "auth_key_env": "T_SNMP_WRONG"})},
        {"id": "v3-wrong-priv", "snmp": agent(components, **{**v3, "priv_key_env": "T_SNMP_WRONG"})},
        {"id": "v2-wrong-community", "snmp": agent(components, community_env="T_SNMP_WRONG",
                                                   timeout_s=0.3, retries=0)}])
    try:
        poll_until(collector, lambda: len(collector.stats()["failing_devices"]) == 3
                   and stored_rows(store) >= 2, "v3 to store two samples while the wrong keys fail")
    finally:
        collector.source.close()
    stored = store.read_range(None, None)
    assert set(stored["device_id"]) == {"v3"}
    assert np.isfinite(stored["bytes_in"].to_numpy()[1:]).all()
    stats = collector.stats()
    assert set(stats["failing_devices"]) == {"v3-wrong-auth", "v3-wrong-priv", "v2-wrong-community"}
    text = json.dumps(stats)
    for secret in (components.snmp_v3_auth, components.snmp_v3_priv, components.snmp_community,
                   "wrong-passphrase"):
        assert secret not in text


def test_an_snmpd_restart_is_a_counter_discontinuity_not_a_spike(tmp_path, components, credentials):
    collector, store = collect(tmp_path, [
        {"id": "lo", "snmp": agent(components, community_env="T_SNMP_COMMUNITY", interface="lo")}])
    try:
        poll_until(collector, lambda: stored_rows(store) >= 3, "three samples before the restart")
        components.restart_snmpd()
        poll_until(collector, lambda: collector.repaired["counter_discontinuity:bytes_in"] >= 1,
                   "the restarted agent's uptime to reset the counter baseline")
        before = stored_rows(store)
        poll_until(collector, lambda: stored_rows(store) >= before + 2, "rates again after the restart")
    finally:
        collector.source.close()
    rates = store.read_range(None, None)["bytes_in"].to_numpy()
    # the kernel's lo counter kept counting while snmpd restarted: no delta across it is
    # trusted, so nothing in between reads as a burst
    assert np.nanmax(rates) < 1e9
    assert collector.repaired["counter_reset:bytes_in"] == 0


def test_node_exporter_scrape_rates_follow_loopback_traffic(tmp_path, components):
    collector, store = collect(tmp_path, [
        {"id": "lo", "node_exporter": {"url": components.node_exporter_url, "interface": "lo"}}])
    try:
        before_ms = send_traffic_until_counted(collector, store, first_rows=1)
    finally:
        collector.source.close()
    assert counted_bytes(store, "lo", "bytes_out", before_ms) <= 1.25 * TRAFFIC_BYTES


def test_prometheus_range_queries_store_the_node_counter_and_a_promql_error_is_that_devices(
        tmp_path, components):
    lo = 'sum(node_network_receive_bytes_total{job="node",device="lo"})'
    query = {"url": components.prometheus_url, "step_s": 1, "lag_s": 3}
    collector, store = collect(tmp_path, [
        {"id": "lo", "prometheus": {**query, "queries": {"bytes_in": lo}}},
        {"id": "typo", "prometheus": {**query, "queries": {"bytes_in": "sum(rate(x[1m])"}}}])
    collector.cursor_ms = {d: c - 20_000 for d, c in collector.cursor_ms.items()}  # some history
    try:
        poll_until(collector, lambda: stored_rows(store) >= 10, "ten query_range samples")
    finally:
        collector.source.close()
    stored = store.read_range(None, None)
    assert set(stored["device_id"]) == {"lo"}
    steps_ms = np.diff(to_ms(stored["timestamp"]).to_numpy())
    assert set(steps_ms.tolist()) == {1000}                     # the step grid, nothing twice
    assert (stored["bytes_in"].dropna() > 0).all()              # Prometheus' own scrapes cross lo
    assert "parse error" in collector.stats()["failing_devices"]["typo"]["error"]


def prometheus_value(components, query: str) -> float | None:
    url = f"{components.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as reply:
        result = json.load(reply)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_eyenets_metrics_and_gives_the_devices_score_back(
        tmp_path, components, credentials):
    collector, store = collect(tmp_path, [
        {"id": "sw-1", "snmp": agent(components, community_env="T_SNMP_COMMUNITY", interface="lo")}],
        name="snmp-0")
    monitor = Monitor(collector.config, store, None, model_version=1, sinks=[ListSink()])
    monitor.record(ScoreSummary(sent_at_s=time.time(), latency_ms=12.0, n_windows=1,
                                device_counts={"sw-1": 1}, judged_devices=["sw-1"],
                                scores={"sw-1": 0.73}, thresholds={"sw-1": 0.5}))
    views = StoreViews(collector.config, store)
    views.monitor, views.collectors = monitor, [collector]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(views), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    target = f"127.0.0.1:{port}"
    try:
        poll_until(collector, lambda: stored_rows(store) >= 2, "two SNMP samples stored")
        wait_for(lambda: server.started, 20, "EyeNet's API to listen")
        components.add_scrape_target(target, {"test": "scrape"})
        components.wait_target_up("eyenet", target)
        score = wait_for(lambda: prometheus_value(
            components, f'eyenet_device_anomaly_score{{device="sw-1",instance="{target}"}}'),
            30, "Prometheus to hold the device's score")
        stored = wait_for(lambda: prometheus_value(
            components, f'eyenet_collector_samples_stored_total{{collector="snmp-0",instance="{target}"}}'),
            30, "Prometheus to hold the collector's stored count")
    finally:
        components.remove_scrape_target(target)
        server.should_exit = True
        thread.join(10)
        collector.source.close()
    assert score == 0.73
    assert stored >= 2


def test_the_sources_bench_polls_its_own_agents_and_says_when_snmpd_is_missing(components, monkeypatch):
    from eyenet.config import EyeNetConfig
    from jobs import bench_sources

    result = bench_sources.run_sources_bench(EyeNetConfig(), agents=2, devices=6, rounds=2)
    assert result["polls"] == 12 and result["failed_polls"] == 0
    assert result["stored_samples"] >= 12 and result["polls_per_s"] > 0
    monkeypatch.setattr(bench_sources, "snmpd_installed", lambda: False)
    assert "not installed" in bench_sources.run_sources_bench(EyeNetConfig(), 1, 1, 1)["snmpd"]
