"""Latency probes: how long reaching the device takes, in milliseconds.

``tcp`` times a TCP connect (the handshake's round trip plus the device's accept), which
works unprivileged everywhere. ``icmp`` times an echo request through a Linux ping socket
(unprivileged where ``net.ipv4.ping_group_range`` admits the user) or a raw socket (root);
where neither is permitted the probe says so and names ``kind: tcp`` as the way out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

from eyenet.sources.specs import ProbeSpec


class ProbeError(Exception):
    """The probe got no answer; the message names host, port and why."""


async def probe_ms(spec: ProbeSpec, host: str) -> float:
    if spec.kind == "tcp":
        return await _tcp_ms(host, spec.port, spec.timeout_s)
    return await _icmp_ms(host, spec.timeout_s)


async def _tcp_ms(host: str, port: int, timeout_s: float) -> float:
    started = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        raise ProbeError(f"tcp probe {host}:{port}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise ProbeError(f"tcp probe {host}:{port}: {exc.strerror or exc}") from None
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    writer.close()
    return elapsed_ms


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _icmp_socket() -> tuple[socket.socket, bool]:
    """A ping socket, else a raw one; the flag says whether replies carry an IP header."""
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except PermissionError:
        pass
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True
    except PermissionError:
        raise ProbeError("icmp probe not permitted for this user (no ping socket, no raw socket); "
                         "use latency_probe kind: tcp") from None


async def _icmp_ms(host: str, timeout_s: float) -> float:
    loop = asyncio.get_running_loop()
    try:
        address = (await loop.getaddrinfo(host, None, family=socket.AF_INET))[0][4][0]
    except OSError as exc:
        raise ProbeError(f"icmp probe {host}: cannot resolve ({exc})") from None
    sock, raw = _icmp_socket()
    sock.setblocking(False)
    ident, seq = os.getpid() & 0xFFFF, int(time.monotonic() * 1000) & 0xFFFF
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"eyenet-probe"
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
    try:
        started = time.perf_counter()
        # a plain sendto on the non-blocking socket: one echo request never blocks, and
        # uvloop (the loop Ray's processes run) has no sock_sendto
        sock.sendto(packet, (address, 0))
        deadline = started + timeout_s
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ProbeError(f"icmp probe {host}: no echo reply within {timeout_s:g} s")
            try:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 1024), left)
            except TimeoutError:
                continue
            body = reply[(reply[0] & 0x0F) * 4:] if raw else reply
            # type 0 is an echo reply; a ping socket rewrites the id, so only seq is ours
            if len(body) >= 8 and body[0] == 0 and struct.unpack("!H", body[6:8])[0] == seq:
                return (time.perf_counter() - started) * 1000.0
    except OSError as exc:
        raise ProbeError(f"icmp probe {host}: {exc.strerror or exc}") from None
    finally:
        sock.close()
