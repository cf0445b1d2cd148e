"""Latency probes: a TCP connect to a listening port, a refused one, and an ICMP echo."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from eyenet.sources.probe import ProbeError, probe_ms
from eyenet.sources.specs import ProbeSpec


def test_a_tcp_probe_times_a_connect_and_a_closed_port_is_an_error_naming_it():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        elapsed = asyncio.run(probe_ms(ProbeSpec(kind="tcp", port=port), "127.0.0.1"))
    assert 0 < elapsed < 1000
    with pytest.raises(ProbeError, match=f"tcp probe 127.0.0.1:{port}"):
        asyncio.run(probe_ms(ProbeSpec(kind="tcp", port=port, timeout_s=0.5), "127.0.0.1"))


@pytest.mark.skipif(os.geteuid() != 0, reason="ICMP needs a ping socket or root (raw socket)")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_icmp_probe_gets_an_echo_reply_from_loopback(loop):
    # uvloop is the loop inside Ray's worker processes (a collector actor): it has no sock_sendto
    import uvloop

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert 0 < runner.run(probe_ms(ProbeSpec(kind="icmp"), "127.0.0.1")) < 1000


def test_an_unresolvable_host_is_an_error_naming_it():
    with pytest.raises(ProbeError, match=r"no-such-host\.invalid"):
        asyncio.run(probe_ms(ProbeSpec(kind="icmp", timeout_s=0.5), "no-such-host.invalid"))
