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
from dataclasses import dataclass, field
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
    get_cmd,
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
    restarted: bool = False      # the uptime went back since the last poll: the agent restarted


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


@dataclass
class _Agent:
    """What the poller learned of one device's agent (see :class:`SnmpPoller`)."""

    bits: int = 64                    # 32 once the agent showed no ifHC* counters
    rows: int | None = None           # interfaces at the last table check
    polls: int = 0
    uptime_cs: int = 0
    labels: dict[int, set[str]] = field(default_factory=dict)   # ifIndex -> names, at the last check
    chosen: list[int] = field(default_factory=list)             # the device's ifIndexes


class SnmpPoller:
    """IF-MIB polls for many agents; create and use it on one event loop.

    Decoding varbinds is most of a poll's CPU (pyasn1, ~0.2 ms each), so a poll asks for no
    more than it needs: GETBULK for exactly the rows the agent had at its last *table check*
    (not the ``max_repetitions`` an agent would fill past the table's end: 101 varbinds for
    4 interfaces instead of 17), and a device that is one interface is a GET of its five
    OIDs. Every ``TABLE_RECHECK_POLLS``-th poll, and the poll after an agent restarted, is
    a table check: one row more per column (to see each column end, so a new interface
    shows) and the interface names.
    """

    def __init__(self) -> None:
        # one engine per v3 credential set: an engine keeps one USM entry per user name, so
        # two agents with the same user and different keys would overwrite each other's keys
        self._engines: dict[Any, SnmpEngine] = {}
        self._targets: dict[tuple[str, int, float, int], UdpTransportTarget] = {}
        self._agents: dict[str, _Agent] = {}

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

    async def _target(self, where: str, spec: SnmpSpec) -> UdpTransportTarget:
        key = (spec.host, spec.port, spec.timeout_s, spec.retries)
        if key not in self._targets:
            try:
                self._targets[key] = await UdpTransportTarget.create(
                    (spec.host, spec.port), timeout=spec.timeout_s, retries=spec.retries)
            except Exception as exc:  # name resolution: pysnmp raises its own error types
                raise SnmpPollError(f"{where}: cannot resolve host: {exc}") from None
        return self._targets[key]

    async def poll(self, device_id: str, spec: SnmpSpec, credentials: Any) -> SnmpReading:
        where = f"SNMP agent {spec.host}:{spec.port}"
        target = await self._target(where, spec)
        agent = self._agents.setdefault(device_id, _Agent())
        agent.polls += 1
        counters = sorted(set(spec.metrics.values()))
        check = agent.rows is None or agent.polls % TABLE_RECHECK_POLLS == 0
        reading = None
        if not check and spec.interface is not None and agent.chosen:
            reading = await self._get_interface(where, credentials, target, agent, counters)
        if reading is None:   # a table check, or the interface's row is gone
            reading = await self._read_table(where, spec, credentials, target, agent, counters)
        if reading.uptime_cs < agent.uptime_cs:
            reading.restarted = True
            agent.polls = TABLE_RECHECK_POLLS - 1   # and its table is checked at the next poll
        agent.uptime_cs = reading.uptime_cs
        return reading

    async def _get_interface(self, where: str, credentials: Any, target: UdpTransportTarget,
                             agent: _Agent, counters: list[str]) -> SnmpReading | None:
        index = agent.chosen[0]
        oids = [f"{IF_COUNTERS[c][agent.bits == 32]}.{index}" for c in counters]
        error, status, error_index, binds = await get_cmd(
            self.engine_for(credentials), credentials, target, ContextData(),
            *(_request_object(o) for o in (SYS_UPTIME, *oids)), lookupMib=False)
        self._check_answer(where, error, status, error_index, binds)
        uptime = self._uptime(where, binds[0])
        values: dict[str, float] = {}
        for counter, (oid, value) in zip(counters, binds[1:], strict=True):
            if not _has_value(value):
                return None
            values[counter] = float(self._number(where, str(oid), value))
        return SnmpReading(values, agent.bits, uptime, [min(agent.labels.get(index, {str(index)}))])

    async def _read_table(self, where: str, spec: SnmpSpec, credentials: Any, target: UdpTransportTarget,
                          agent: _Agent, counters: list[str]) -> SnmpReading:
        needs_names = spec.interface is not None or bool(spec.exclude_interfaces)
        check = agent.rows is None or agent.polls % TABLE_RECHECK_POLLS == 0 or (
            needs_names and not agent.labels) or spec.interface is not None
        trusted = None if check else agent.rows
        repetitions = min(spec.max_repetitions, trusted or (agent.rows or spec.max_repetitions) + 1)
        names = needs_names and check

        async def walk() -> tuple[int, dict[str, dict[int, Any]]]:
            return await self._walk(where, credentials, target, self._columns(counters, agent.bits, names),
                                    repetitions, trusted)

        uptime, columns = await walk()
        if agent.bits == 64 and not any(columns[IF_COUNTERS[c][0]] for c in counters):
            agent.bits = 32   # no ifHC* counters on this agent: its 32-bit ones, wrapping at 2**32
            uptime, columns = await walk()
        if not any(columns[IF_COUNTERS[c][agent.bits == 32]] for c in counters):
            agent.bits = 64
            raise SnmpPollError(f"{where}: no IF-MIB interface counters (ifHCInOctets or ifInOctets)")
        if names:
            agent.labels = self._labels(columns)
        indexes = sorted(set().union(*(columns[IF_COUNTERS[c][agent.bits == 32]] for c in counters)))
        agent.rows = len(indexes)
        agent.chosen = self._choose(where, spec, indexes, agent.labels)
        summed: dict[str, float] = {}
        for counter in counters:
            oid = IF_COUNTERS[counter][agent.bits == 32]
            values = [columns[oid][i] for i in agent.chosen if i in columns[oid]]
            if values:
                summed[counter] = float(sum(values))
        return SnmpReading(summed, agent.bits, uptime,
                           [min(agent.labels.get(i, {str(i)})) for i in agent.chosen])

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

    async def _walk(self, where: str, credentials: Any, target: UdpTransportTarget,
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
            self._check_answer(where, error, status, index, binds)
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
                row = int(oid.rsplit(".", 1)[1])
                is_name = column in (IF_NAME, IF_DESCR)
                found[column][row] = value if is_name else self._number(where, oid, value)
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
    def _check_answer(where: str, error: Any, status: Any, index: Any, binds: Any) -> None:
        if error:
            raise SnmpPollError(f"{where}: {error}")
        if int(status):
            raise SnmpPollError(f"{where}: agent answered {status.prettyPrint()} at varbind {int(index)}")
        if not binds:
            raise SnmpPollError(f"{where}: empty response")

    @staticmethod
    def _number(where: str, oid: str, value: Any) -> int:
        if not isinstance(value, NUMERIC):
            raise SnmpPollError(f"{where}: {oid} is not a number ({type(value).__name__} "
                                f"{value.prettyPrint()!r})")
        return int(value)

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
