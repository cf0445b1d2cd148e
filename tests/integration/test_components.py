"""Smoke test of the real components (tests/components.py) through their own clients: the
net-snmp CLI tools, plain HTTP. Numeric OIDs: Debian ships no IF-MIB file for the tools."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request

import pytest

from tests.components import Components
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_HC_IN_OCTETS = "1.3.6.1.2.1.31.1.1.1.6"


def snmp(c: Components, tool: str, *args: str, timeout: float = 2.0) -> subprocess.CompletedProcess:
    # The tools' own persistent state (v3 engine cache) goes under the components dir, not
    # /var/lib/snmp.
    env = {**os.environ, "SNMP_PERSISTENT_DIR": os.path.join(c.dir, "snmp-cli")}
    return subprocess.run([tool, "-On", "-t", str(timeout), "-r", "0", *args],
                          capture_output=True, text=True, env=env, timeout=timeout + 10)


def v2c(c: Components, tool: str, *args: str, community: str | None = None,
        timeout: float = 2.0) -> subprocess.CompletedProcess:
    return snmp(c, tool, "-v2c", "-c", community or c.snmp_community, c.snmp_addr, *args, timeout=timeout)


def v3(c: Components, tool: str, *oids: str) -> subprocess.CompletedProcess:
    return snmp(c, tool, "-v3", "-l", "authPriv", "-u", c.snmp_v3_user, "-a", "SHA", "-A", c.snmp_v3_auth,
                "-x", "AES", "-X", c.snmp_v3_priv, c.snmp_addr, *oids)


def uptime_ticks(c: Components) -> int:
    out = v2c(c, "snmpget", "-Oqvt", SYS_UPTIME)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def test_snmpd_serves_if_mib_over_v2c(components: Components) -> None:
    out = v2c(components, "snmpbulkwalk", IF_HC_IN_OCTETS)
    assert out.returncode == 0, out.stderr
    counters = [line for line in out.stdout.splitlines() if "Counter64" in line]
    assert counters, out.stdout  # one 64-bit ifHCInOctets per interface, lo at least


def test_snmpd_serves_v3_authpriv(components: Components) -> None:
    out = v3(components, "snmpget", SYS_UPTIME)
    assert out.returncode == 0, out.stderr
    assert "Timeticks" in out.stdout


def test_wrong_community_gets_no_answer(components: Components) -> None:
    out = v2c(components, "snmpget", SYS_UPTIME, community="not-" + components.snmp_community, timeout=0.5)
    assert out.returncode != 0
    assert "Timeout" in out.stderr  # an agent ignores a bad community, it does not refuse it


def test_node_exporter_reports_loopback(components: Components) -> None:
    with urllib.request.urlopen(components.node_exporter_url, timeout=5) as r:
        text = r.read().decode()
    assert 'node_network_receive_bytes_total{device="lo"}' in text


def test_prometheus_scrapes_node_exporter(components: Components) -> None:
    targets = get_json(f"{components.prometheus_url}/api/v1/targets?state=active")["data"]["activeTargets"]
    assert any(t["labels"]["job"] == "node" and t["health"] == "up" for t in targets), targets
    query = urllib.parse.urlencode({"query": 'up{job="node"}'})
    result = get_json(f"{components.prometheus_url}/api/v1/query?{query}")["data"]["result"]
    assert [r["value"][1] for r in result] == ["1"], result


def test_restart_snmpd_resets_sys_uptime(components: Components) -> None:
    # Last in this module: the agent it leaves is new. Its uptime must be clearly above 0
    # first, or "went back" proves nothing.
    before = wait_for(lambda: (ticks := uptime_ticks(components)) >= 50 and ticks, 5,
                      "snmpd's uptime to pass half a second", poll_s=0.05)
    old_pid = components.pids["snmpd"]
    components.restart_snmpd()
    assert components.pids["snmpd"] != old_pid
    after = uptime_ticks(components)
    assert after < before, (before, after)
    # The v3 user survives the restart: snmpd saved it (usmUser) in its persistent dir.
    assert v3(components, "snmpget", SYS_UPTIME).returncode == 0
