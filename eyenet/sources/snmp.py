"""Polling IF-MIB interface counters from SNMP agents (pysnmp 7, asyncio, v2c and v3).

One :class:`SnmpPoller` serves many agents from one SNMP engine on the caller's event loop:
a poll is GETBULK requests for ``sysUpTime.0`` plus the counter columns (and the interface
names when the spec selects or excludes interfaces), paged until every column has left its
subtree. An agent without 64-bit ``ifHC*`` counters is polled on the 32-bit ``ifTable``
columns from then on, and says so (``bits``), so that the validator wraps at 2**32.

What the poller does not do: rates, wraps and resets. It returns raw counters (summed over
the device's interfaces) and the agent's uptime; the telemetry rules take it from there.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
)
from pysnmp.hlapi.v3arch.asyncio import auth as usm
from pysnmp.proto.rfc1902 import Counter32, Counter64, Gauge32, Integer32, Unsigned32

from eyenet.sources.specs import IF_COUNTERS, SnmpSpec, secret

TABLE_RECHECK_POLLS = 10
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SYS_UPTIME_NEXT = "1.3.6.1.2.1.1.3"   # GETBULK's non-repeaters are GETNEXTs: the OID before .0
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_DESCR = "1.3.6.1.2.1.2.2.1.2"
NUMERIC = (Counter32, Counter64, Gauge32, Integer32, Unsigned32)
AUTH = {"md5": usm.USM_AUTH_HMAC96_MD5, "sha": usm.USM_AUTH_HMAC96_SHA,
        "sha224": usm.USM_AUTH_HMAC128_SHA224, "sha256": usm.USM_AUTH_HMAC192_SHA256,
        "sha384": usm.USM_AUTH_HMAC256_SHA384, "sha512": usm.USM_AUTH_HMAC384_SHA512,
        "none": usm.USM_AUTH_NONE}
PRIV = {"des": usm.USM_PRIV_CBC56_DES, "3des": usm.USM_PRIV_CBC168_3DES,
        "aes": usm.USM_PRIV_CFB128_AES, "aes192": usm.USM_PRIV_CFB192_AES,
        "aes256": usm.USM_PRIV_CFB256_AES, "none": usm.USM_PRIV_NONE}


class SnmpPollError(Exception):
    """One agent's poll failed; the message names the agent and what went wrong, never a
    credential."""


@dataclass
class SnmpReading:
    counters: dict[str, float]   # IF_COUNTERS name -> raw value summed over the device's interfaces
    bits: int                    # 64: ifHC* counters; 32: the ifTable fallback
    uptime_cs: int               # sysUpTime, hundredths of a second since the agent (re)started
    interfaces: list[str]


def auth_data(device_id: str, spec: SnmpSpec) -> CommunityData | UsmUserData:
    """The v2c community or v3 user, credentials read from the environment now."""
    if spec.version == "2c":
        return CommunityData(secret(spec.community_env, "SNMP community", device_id), mpModel=1)
    auth_key = (secret(spec.auth_key_env, "SNMP v3 auth key", device_id)
                if spec.auth_protocol != "none" else None)
    priv_key = (secret(spec.priv_key_env, "SNMP v3 privacy key", device_id)
                if spec.priv_protocol != "none" else None)
    return UsmUserData(spec.user, authKey=auth_key, privKey=priv_key,
                       authProtocol=AUTH[spec.auth_protocol], privProtocol=PRIV[spec.priv_protocol])


class SnmpPoller:
    """IF-MIB polls for many agents; create and use it on one event loop."""

    def __init__(self) -> None:
        # one engine per v3 credential set: an engine keeps one USM entry per user name, so
        # two agents with the same user and different keys would overwrite each other's keys
        self._engines: dict[Any, SnmpEngine] = {}
        self._targets: dict[tuple[str, int, float, int], UdpTransportTarget] = {}
        self._bits: dict[str, int] = {}   # device -> counter width found on its agent
        # device -> interfaces its agent had last time. GETBULK then asks for exactly that
        # many rows, and every TABLE_RECHECK_POLLS-th poll (and after an agent restart) for
        # one more, to see each column end and so notice a new interface: decoding varbinds
        # is most of a poll's CPU (pyasn1, ~0.2 ms each), and rows past a table's end are
        # wasted (at the default 25 repetitions, 4 interfaces cost 101 varbinds, not 17)
        self._rows: dict[str, int] = {}
        self._polls: dict[str, int] = {}
        self._uptime_cs: dict[str, int] = {}

    def engine_for(self, credentials: Any) -> SnmpEngine:
        key: Any = "v2c"
        if isinstance(credentials, UsmUserData):
            key = (credentials.userName, credentials.authKey, credentials.privKey,
                   credentials.authProtocol, credentials.privProtocol)
        if key not in self._engines:
            self._engines[key] = SnmpEngine()
        return self._engines[key]

    async def close(self) -> None:
        """Close the engines' transports and cancel their timer tasks (on the poller's loop)."""
        for engine in self._engines.values():
            engine.close_dispatcher()
        self._engines.clear()
        await asyncio.sleep(0)   # let the cancelled timer task finish before the loop closes

    async def poll(self, device_id: str, spec: SnmpSpec, credentials: Any) -> SnmpReading:
        where = f"SNMP agent {spec.host}:{spec.port}"
        key = (spec.host, spec.port, spec.timeout_s, spec.retries)
        if key not in self._targets:
            try:
                self._targets[key] = await UdpTransportTarget.create(
                    (spec.host, spec.port), timeout=spec.timeout_s, retries=spec.retries)
            except Exception as exc:  # name resolution: pysnmp raises its own error types
                raise SnmpPollError(f"{where}: cannot resolve host: {exc}") from None
        target = self._targets[key]
        names = spec.interface is not None or bool(spec.exclude_interfaces)
        counters = sorted({spec.metrics[m] for m in spec.metrics})
        bits = self._bits.get(device_id, 64)
        known = self._rows.get(device_id)
        self._polls[device_id] = polls = self._polls.get(device_id, 0) + 1
        trusted = known if known and polls % TABLE_RECHECK_POLLS else None
        repetitions = min(spec.max_repetitions, trusted or (known or spec.max_repetitions) + 1)
        uptime, columns = await self._walk(where, spec, credentials, target,
                                           self._columns(counters, bits, names), repetitions, trusted)
        if bits == 64 and not any(columns[IF_COUNTERS[c][0]] for c in counters):
            bits = 32   # no ifHC* counters on this agent: its 32-bit ones, wrapping at 2**32
            uptime, columns = await self._walk(where, spec, credentials, target,
                                               self._columns(counters, bits, names), repetitions, trusted)
        if uptime < self._uptime_cs.get(device_id, 0):
            self._polls[device_id] = TABLE_RECHECK_POLLS - 1   # restarted: recheck its table next poll
        self._uptime_cs[device_id] = uptime
        if not any(columns[IF_COUNTERS[c][1 if bits == 32 else 0]] for c in counters):
            raise SnmpPollError(f"{where}: no IF-MIB interface counters (ifHCInOctets or ifInOctets)")
        self._bits[device_id] = bits
        label = self._labels(columns) if names else {}
        indexes = sorted(set().union(*(columns[IF_COUNTERS[c][bits == 32]] for c in counters)))
        self._rows[device_id] = len(indexes)
        chosen = self._choose(where, spec, indexes, label)
        summed: dict[str, float] = {}
        for counter in counters:
            oid = IF_COUNTERS[counter][bits == 32]
            values = [columns[oid][i] for i in chosen if i in columns[oid]]
            if values:
                summed[counter] = float(sum(values))
        return SnmpReading(summed, bits, uptime, [min(label.get(i, {str(i)})) for i in chosen])

    @staticmethod
    def _columns(counters: list[str], bits: int, names: bool) -> list[str]:
        oids = [IF_COUNTERS[c][bits == 32] for c in counters]
        return [*oids, IF_NAME, IF_DESCR] if names else oids

    @staticmethod
    def _labels(columns: dict[str, dict[int, Any]]) -> dict[int, set[str]]:
        """ifIndex -> its ifName and ifDescr (a spec may name an interface by either)."""
        label: dict[int, set[str]] = {}
        for column in (IF_NAME, IF_DESCR):
            for i, value in columns[column].items():
                if str(value):
                    label.setdefault(i, set()).add(str(value))
        return label

    @staticmethod
    def _choose(where: str, spec: SnmpSpec, indexes: list[int], label: dict[int, set[str]]) -> list[int]:
        if spec.interface is not None:
            chosen = [i for i in indexes if spec.interface in label.get(i, ())]
            if not chosen:
                have = ", ".join(sorted(min(label.get(i, {str(i)})) for i in indexes))
                raise SnmpPollError(f"{where}: no interface {spec.interface!r} (has {have})")
            return chosen[:1]
        return [i for i in indexes if not label.get(i, set()) & set(spec.exclude_interfaces)]

    async def _walk(self, where: str, spec: SnmpSpec, credentials: Any, target: UdpTransportTarget,
                    columns: list[str], repetitions: int,
                    known_rows: int | None = None) -> tuple[int, dict[str, dict[int, Any]]]:
        """sysUpTime and every row of ``columns`` (ifIndex -> value), by paged GETBULK; with
        ``known_rows``, a column is taken as complete once it has that many."""
        found: dict[str, dict[int, Any]] = {c: {} for c in columns}
        start = {c: c for c in columns}
        uptime: int | None = None
        while start:
            request = [_request_object(SYS_UPTIME_NEXT), *(_request_object(start[c]) for c in start)]
            error, status, index, binds = await bulk_cmd(
                self.engine_for(credentials), credentials, target, ContextData(), 1, repetitions, *request,
                lookupMib=False)
            if error:
                raise SnmpPollError(f"{where}: {error}")
            if int(status):
                raise SnmpPollError(f"{where}: agent answered {status.prettyPrint()} at varbind {int(index)}")
            if not binds:
                raise SnmpPollError(f"{where}: empty response")
            uptime = self._uptime(where, binds[0])
            open_columns, before = list(start), dict(start)
            rows = binds[1:]
            still = set(open_columns)
            for n, (oid_obj, value) in enumerate(rows):
                column = open_columns[n % len(open_columns)]
                if column not in still:
                    continue
                oid = str(oid_obj)
                if not oid.startswith(column + ".") or not _has_value(value):
                    still.discard(column)
                    continue
                if column not in (IF_NAME, IF_DESCR) and not isinstance(value, NUMERIC):
                    raise SnmpPollError(f"{where}: {oid} is not a number ({type(value).__name__} "
                                        f"{value.prettyPrint()!r})")
                row = int(oid.rsplit(".", 1)[1])
                found[column][row] = value if column in (IF_NAME, IF_DESCR) else int(value)
                start[column] = oid
            if known_rows is not None:
                still = {c for c in still if len(found[c]) < known_rows}
            # a column still inside its subtree goes on from its last row (the agent may
            # also have cut the response short); one that made no progress is an error
            if still and all(start[c] == before[c] for c in still):
                raise SnmpPollError(f"{where}: GETBULK made no progress at {sorted(still)}")
            start = {c: start[c] for c in still}
        assert uptime is not None
        return uptime, found

    @staticmethod
    def _uptime(where: str, bind: Any) -> int:
        oid, value = bind
        if str(oid) != SYS_UPTIME or not _has_value(value):
            raise SnmpPollError(f"{where}: no sysUpTime.0 in the response")
        return int(value)


@functools.lru_cache(maxsize=65536)
def _request_object(oid: str) -> ObjectType:
    """A request varbind, kept: pysnmp resolves an ObjectType against its MIB view once and
    then reuses it, and that lookup is a fifth of a poll's CPU when done every time."""
    return ObjectType(ObjectIdentity(oid))


def _has_value(value: Any) -> bool:
    """False for the v2c exceptions noSuchObject, noSuchInstance and endOfMibView."""
    return type(value).__name__ not in ("NoSuchObject", "NoSuchInstance", "EndOfMibView", "Null")
