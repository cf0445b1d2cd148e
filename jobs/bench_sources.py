"""``eyenet bench sources``: how many SNMP agent polls per second one collector sustains.

It starts ``--agents`` private snmpd agents on loopback ports (net-snmp, serving this
machine's interfaces; when snmpd is not installed it says so and measures nothing), lists
``--devices`` devices spread over them round-robin (each device an agent, its interfaces
summed, or with ``--interface NAME`` one interface), and runs the collector core that a
collector actor runs (``eyenet.streaming.collector.Collector`` over the ``devices``
source: concurrent GETBULK polls, validation, counter rates, the SQLite store) for
``--rounds`` back-to-back poll rounds after a first one that finds each agent's table.
Reported: polls per second over the measured rounds, CPU seconds per poll of this process
(the agents' own CPU is theirs), failed polls, and the fleet that rate serves at a 60 s
interval. The agents share this machine's cores with the collector.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.collector import freeze_long_lived_objects
from eyenet.config import EyeNetConfig
from eyenet.sources.devices import DeviceSource
from eyenet.store import open_store
from eyenet.streaming.collector import Collector
from jobs.options import SourcesBenchOptions, job_main, print_result
from jobs.snmp_agents import snmpd_installed, start_agent, write_agent_config

COMMUNITY_ENV = "BENCH_SNMP_COMMUNITY"
POLL_INTERVAL_S = 60.0   # the fleet a rate serves is rate x this


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(source: DeviceSource, device_ids: list[str], deadline_s: float) -> None:
    """Wait until every agent answers a poll (snmpd takes a fraction of a second to bind)."""
    end = time.monotonic() + deadline_s
    while True:
        now = source.now_ms()
        failed = source.fetch(device_ids, now - 1000, now).failed
        if not failed:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"agents not answering after {deadline_s:g} s: {sorted(failed.values())[:3]}")
        time.sleep(0.2)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_sources_bench(config: EyeNetConfig, agents: int, devices: int, rounds: int,
                      interface: str | None = None) -> dict[str, Any]:
    if not snmpd_installed():
        return {"snmpd": "not installed (apt-get install snmpd): nothing measured"}
    work = Path(tempfile.mkdtemp(prefix="eyenet-bench-sources-"))
    community = secrets.token_hex(8)
    processes, ports = [], []
    os.environ[COMMUNITY_ENV] = community   # devices name the variable, as a real config does
    try:
        for i in range(agents):
            directory = work / f"agent-{i}"
            directory.mkdir()
            write_agent_config(directory, community)
            ports.append(_free_udp_port())
            processes.append(start_agent(directory, ports[-1]))
        specs = [{"id": f"bench-{d:05d}",
                  "snmp": {"host": "127.0.0.1", "port": ports[d % agents], "community_env": COMMUNITY_ENV,
                           "timeout_s": 2.0, "retries": 1, **({"interface": interface} if interface else {})}}
                 for d in range(devices)]
        data = config.to_dict() | {"devices": specs, "sample_interval_s": POLL_INTERVAL_S,
                                   "store_uri": f"sqlite:///{work}/bench.db"}
        cfg = EyeNetConfig.from_dict(data)
        source = DeviceSource(cfg)
        ids = source.devices()
        try:
            _answers(source, ids[:agents], 30.0)
            collector = Collector(cfg, source, open_store(cfg.store_uri), ids, "bench-sources")
            freeze_long_lived_objects()   # as the collector actor does
            collector.poll()   # each agent's table found once (the rows GETBULK then asks for)
            polled, failed = 0, 0
            wall0, cpu0 = time.perf_counter(), _cpu_s()
            for _ in range(rounds):
                result = collector.poll()
                polled += len(ids)
                failed += len(result.failed_devices)
            wall_s, cpu_s = time.perf_counter() - wall0, _cpu_s() - cpu0
            stored = collector.totals["stored"]
        finally:
            source.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    rate = polled / wall_s
    return {"agents": agents, "devices": devices, "rounds": rounds,
            "device_mode": f"interface {interface}" if interface else "agent (interfaces summed)",
            "polls": polled, "failed_polls": failed, "stored_samples": stored,
            "seconds": round(wall_s, 3), "polls_per_s": round(rate, 1),
            "collector_cpu_ms_per_poll": round(1000 * cpu_s / polled, 3),
            "devices_at_60s_interval": int(rate * POLL_INTERVAL_S)}


def main(config: EyeNetConfig, options: SourcesBenchOptions) -> int:
    result = run_sources_bench(config, options.agents, options.devices, options.rounds, options.interface)
    print_result(result, options.json)
    return 0 if "polls_per_s" in result else 1


if __name__ == "__main__":
    raise SystemExit(job_main(SourcesBenchOptions, main, prog="python -m jobs.bench_sources",
                              description=__doc__))
