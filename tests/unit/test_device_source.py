"""The configured devices as a source: config errors, a recorded 32-bit wrap through the
collector, failures that stay per device and never show a credential, and the Prometheus
scrape and query parsers against a loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

from eyenet.errors import ConfigError
from eyenet.sources.devices import DeviceSource
from eyenet.sources.snmp import SnmpReading
from eyenet.store import open_store
from eyenet.streaming.collector import Collector
from tests.synthetic import make_config

T0 = 1_900_000_000.0


def devices_config(tmp_path, devices, **overrides):
    return make_config(tmp_path, devices=devices, **overrides)


@pytest.mark.parametrize(("device", "named"), [
    ({"id": "a", "snmp": {"host": "h", "community_env": "my-secret"}}, "'my-secret' is not an environment"),
    ({"id": "a", "snmp": {"host": "h", "community_env": "EYENET_COMMUNITY"}}, "are config overrides"),
    ({"id": "a", "snmp": {"host": "h", "version": "3"}}, "SNMP v3 needs user"),
    ({"id": "a", "snmp": {"host": "h", "version": "3", "user": "u"}}, "needs auth_key_env"),
    ({"id": "a", "snmp": {"host": "h"}, "node_exporter": {"url": "http://h/metrics"}}, "give exactly one"),
    ({"id": "a", "snmp": {"host": "h", "metrics": {"bytes_in": "in_errors"}}}, "in_errors"),
    ({"id": "a", "snmp": {"host": "h", "metrics": {"jitter": "in_octets"}}}, "'jitter'"),
    ({"id": "a", "snmp": {"host": "h", "communty_env": "X"}}, "communty_env"),
    ({"id": "a b", "latency_probe": {"host": "h"}}, "'a b'"),
    ({"id": "a"}, "has no source"),
    ({"id": "a", "node_exporter": {"url": "ftp://h"}}, "ftp://h"),
])
def test_a_bad_device_entry_is_refused_naming_what_is_wrong(tmp_path, device, named):
    with pytest.raises(ConfigError, match="devices") as err:
        devices_config(tmp_path, [device])
    assert named in str(err.value)


def test_a_device_listed_twice_is_refused(tmp_path):
    probe = {"latency_probe": {"host": "h"}}
    with pytest.raises(ConfigError, match="'a' is listed twice"):
        devices_config(tmp_path, [{"id": "a", **probe}, {"id": "a", **probe}])


def test_a_snmp_counter_must_feed_a_counter_metric(tmp_path):
    with pytest.raises(ConfigError, match="must be in counter_metrics"):
        devices_config(tmp_path, [{"id": "a", "snmp": {"host": "h"}}],
                       counter_metrics=["bytes_out", "packets_in", "packets_out"])


class RecordedAgent:
    """An SNMP agent's answers as recorded: 32-bit counters that wrap, then an agent restart."""

    def __init__(self, readings: list[SnmpReading]) -> None:
        self.readings = list(readings)

    async def poll(self, device_id, spec, credentials) -> SnmpReading:
        return self.readings.pop(0)


def reading(octets: int, uptime_cs: int, restarted: bool = False) -> SnmpReading:
    counters = {"in_octets": octets, "out_octets": octets, "in_ucast_packets": octets // 1000,
                "out_ucast_packets": octets // 1000}
    return SnmpReading({k: float(v) for k, v in counters.items()}, 32, uptime_cs, ["eth0"], restarted)


def test_a_recorded_32_bit_wrap_and_an_agent_restart_through_the_collector(tmp_path, monkeypatch):
    monkeypatch.setenv("SNMP_COMMUNITY", "public-test")
    config = devices_config(tmp_path, [{"id": "sw1", "snmp": {"host": "127.0.0.1"}}],
                            sample_interval_s=10.0)
    wrap = 2**32
    recorded = [reading(wrap - 30_000, 100), reading(wrap - 10_000, 1_100),
                reading(10_000, 2_100),                 # wrapped: 20,000 octets in 10 s
                reading(30_000, 3_100),
                reading(31_000, 50, restarted=True),    # uptime went back: the agent restarted
                reading(41_000, 1_050)]
    clock = iter(T0 + 10 * i for i in range(len(recorded) + 1))
    now = {"s": next(clock)}
    source = DeviceSource(config, clock=lambda: now["s"], snmp_poller=RecordedAgent(recorded))
    store = open_store(config.store_uri)
    collector = Collector(config, source, store, ["sw1"], "snmp-0", now_s=lambda: now["s"])
    try:
        for _ in recorded:
            now["s"] = next(clock)
            result = collector.poll()
            assert not result.failed_devices
    finally:
        source.close()
    stored = store.read_range(None, None)["bytes_in"].to_numpy()
    assert len(stored) == len(recorded)
    expected = [np.nan, 2_000.0, 2_000.0, 2_000.0, np.nan, 1_000.0]
    np.testing.assert_allclose(stored, expected)
    assert collector.repaired["counter_wrap:bytes_in"] == 1
    assert collector.repaired["counter_discontinuity:bytes_in"] == 1
    assert collector.repaired["counter_reset:bytes_in"] == 0


def test_failing_devices_are_counted_apart_and_no_credential_reaches_an_error_or_a_log(
        tmp_path, monkeypatch, caplog, http_pages):
    secrets = {"T_EYENET_COMMUNITY": "c0mmunity-s3cret", "T_EYENET_AUTH": "auth-s3cret-pass",
               "T_EYENET_PRIV": "priv-s3cret-pass"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    Pages.pages["/metrics"] = (200, "text/plain", EXPOSITION)
    dead = {"host": "127.0.0.1", "port": 9, "timeout_s": 0.2, "retries": 0}   # nothing answers there
    config = devices_config(tmp_path, [
        {"id": "v2", "snmp": {**dead, "community_env": "T_EYENET_COMMUNITY"}},
        {"id": "v3", "snmp": {**dead, "version": "3", "user": "eyenet", "auth_key_env": "T_EYENET_AUTH",
                              "priv_key_env": "T_EYENET_PRIV"}},
        {"id": "unset", "snmp": {**dead, "community_env": "T_EYENET_NOT_SET"}},
        {"id": "ok", "node_exporter": {"url": f"{http_pages}/metrics"}},
    ])
    caplog.set_level(logging.DEBUG)
    source = DeviceSource(config)
    store = open_store(config.store_uri)
    # cursors a second back: started at now, a poll within the same millisecond has nothing
    # due and polls no device (the test failed so about one run in five)
    collector = Collector(config, source, store, source.devices(), "mixed-0", start_ms=source.now_ms() - 1000)
    try:
        result = collector.poll()
    finally:
        source.close()
    assert set(result.failed_devices) == {"v2", "v3", "unset"}
    assert "T_EYENET_NOT_SET" in result.failed_devices["unset"]
    assert "No SNMP response" in result.failed_devices["v2"]
    assert result.accepted["device_id"].tolist() == ["ok"]       # the others did not hold it back
    assert store.read_range(None, None)["device_id"].tolist() == ["ok"]
    stats = collector.stats()
    assert set(stats["failing_devices"]) == {"v2", "v3", "unset"}
    text = json.dumps(stats) + caplog.text + repr(source.__dict__) + repr(config)
    for value in secrets.values():
        assert value not in text


class FaultyAgent(RecordedAgent):
    """Answers like a recording, except for one device whose poll hits a bug of ours."""

    async def poll(self, device_id, spec, credentials) -> SnmpReading:
        if device_id == "buggy":
            raise NotImplementedError("sock_sendto")
        return await super().poll(device_id, spec, credentials)


def test_an_unexpected_fault_in_one_devices_poll_fails_that_device_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SNMP_COMMUNITY", "public-test")
    config = devices_config(tmp_path, [{"id": "buggy", "snmp": {"host": "127.0.0.1"}},
                                       {"id": "fine", "snmp": {"host": "127.0.0.1"}}])
    source = DeviceSource(config, snmp_poller=FaultyAgent([reading(1_000, 10)]))
    try:
        now = source.now_ms()
        result = source.fetch(source.devices(), now - 1000, now)
    finally:
        source.close()
    assert result.samples["device_id"].tolist() == ["fine"]
    assert result.failed == {"buggy": "snmp poll failed: NotImplementedError: sock_sendto"}
    assert "device buggy: snmp poll failed" in caplog.text


class Pages(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, tuple[int, str, str]]] = {}
    asked: ClassVar[list[str]] = []

    def do_GET(self):
        Pages.asked.append(self.path)
        status, content_type, body = Pages.pages.get(self.path.split("?")[0], (404, "text/plain", "no"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def http_pages() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    Pages.pages.clear()
    Pages.asked.clear()


EXPOSITION = """# HELP node_network_receive_bytes_total Network device statistic receive_bytes.
# TYPE node_network_receive_bytes_total counter
node_network_receive_bytes_total{device="eth0"} 1000
node_network_receive_bytes_total{device="lo"} 5e3
# TYPE node_network_transmit_bytes_total counter
node_network_transmit_bytes_total{device="eth0"} 300
node_network_transmit_bytes_total{device="lo"} 5000
"""


def test_node_exporter_scrapes_sum_interfaces_or_pick_one_and_bad_pages_fail_that_device(
        tmp_path, http_pages):
    Pages.pages.update({"/metrics": (200, "text/plain; version=0.0.4", EXPOSITION),
                        "/login": (200, "text/html", "<html><body>Sign in</body></html>"),
                        "/garbage": (200, "text/plain", "node_network_receive_bytes_total{device=eth0 1 x\n"),
                        "/down": (503, "text/plain", "unavailable")})
    ne = {"metrics": {"bytes_in": "node_network_receive_bytes_total",
                      "bytes_out": "node_network_transmit_bytes_total"}}
    config = devices_config(tmp_path, [
        {"id": "all", "node_exporter": {"url": f"{http_pages}/metrics", **ne}},
        {"id": "eth0", "node_exporter": {"url": f"{http_pages}/metrics", "interface": "eth0", **ne}},
        {"id": "eth9", "node_exporter": {"url": f"{http_pages}/metrics", "interface": "eth9", **ne}},
        {"id": "html", "node_exporter": {"url": f"{http_pages}/login", **ne}},
        {"id": "garbage", "node_exporter": {"url": f"{http_pages}/garbage", **ne}},
        {"id": "down", "node_exporter": {"url": f"{http_pages}/down", **ne}},
    ])
    source = DeviceSource(config)
    try:
        now = source.now_ms()
        result = source.fetch(source.devices(), now - 1000, now)
    finally:
        source.close()
    got = result.samples.set_index("device_id")
    assert got.loc["all", "bytes_in"] == 6000.0 and got.loc["all", "bytes_out"] == 5300.0
    assert got.loc["eth0", "bytes_in"] == 1000.0 and np.isnan(got.loc["eth0", "packets_in"])
    assert "no network device 'eth9' (has eth0, lo)" in result.failed["eth9"]
    assert "text/html, not the Prometheus text format" in result.failed["html"]
    assert "not Prometheus text format" in result.failed["garbage"]
    assert "HTTP 503" in result.failed["down"]
    assert source.poll_errors["node_exporter"] == 4


def matrix(*series):
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[t, str(v)] for t, v in s]} for s in series]}})


def test_prometheus_range_queries_run_behind_now_on_the_step_grid_and_errors_name_the_query(
        tmp_path, http_pages):
    config = devices_config(tmp_path, [
        {"id": "good", "prometheus": {"url": f"{http_pages}/good", "step_s": 5, "lag_s": 10,
                                      "queries": {"bytes_in": "sum(rx)"}}},
        {"id": "bad", "prometheus": {"url": f"{http_pages}/bad", "queries": {"bytes_in": "sum(rx"}}},
        {"id": "many", "prometheus": {"url": f"{http_pages}/many", "queries": {"bytes_in": "rx"}}},
    ])
    Pages.pages.update({
        "/good/api/v1/query_range": (200, "application/json", matrix([(T0 - 5, 10), (T0, 20)])),
        "/bad/api/v1/query_range": (400, "application/json", json.dumps(
            {"status": "error", "errorType": "bad_data", "error": "1:8: parse error: unclosed paren"})),
        "/many/api/v1/query_range": (200, "application/json", matrix([(T0, 1)], [(T0, 2)])),
    })
    source = DeviceSource(config, clock=lambda: T0 + 12)
    try:
        result = source.fetch(source.devices(), int((T0 - 8) * 1000), int((T0 + 12) * 1000))
    finally:
        source.close()
    assert result.samples["bytes_in"].tolist() == [10.0, 20.0]
    good = next(p for p in Pages.asked if p.startswith("/good"))
    # (since - lag, until - lag] on the 5 s grid: the first step after T0 - 18 up to T0 + 2
    assert f"start={T0 - 15:.3f}" in good and f"end={T0:.3f}" in good and "step=5" in good
    assert "bad_data 1:8: parse error" in result.failed["bad"] and "'sum(rx'" in result.failed["bad"]
    assert "returned 2 series" in result.failed["many"]


def test_a_counter_oid_answered_with_a_non_number_is_an_error_naming_it():
    from pyasn1.type.univ import OctetString

    from eyenet.sources.snmp import SnmpPoller, SnmpPollError

    with pytest.raises(SnmpPollError, match=r"1\.3\.6\.1\.2\.1\.31\.1\.1\.1\.6\.2 is not a number "
                                            r"\(OctetString 'n/a'\)"):
        SnmpPoller._number("SNMP agent h:161", "1.3.6.1.2.1.31.1.1.1.6.2", OctetString("n/a"))
