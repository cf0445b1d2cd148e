"""Real telemetry components for the tests: snmpd, node_exporter and Prometheus.

Each runs as our own child process on a free 127.0.0.1 port with a config under one
directory, never as the distribution's service: tests never depend on ports 161/9100/9090
nor on /etc and /var/lib. Importable (the `components` fixture) and a CLI (`.ci/run`):

    python -m tests.components start --dir DIR     # writes DIR/env and DIR/components.json
    python -m tests.components restart-snmpd --dir DIR
    python -m tests.components stop --dir DIR      # idempotent
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobs.snmp_agents import SNMPD, snmpd_argv, write_agent_config

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PROMETHEUS = "/usr/bin/prometheus"
SNMP_CLI = ("/usr/bin/snmpget", "/usr/bin/snmpbulkwalk")  # what the tests query snmpd with
READY_S = {"snmpd": 15.0, "node_exporter": 15.0, "prometheus": 30.0}
POLL_S = 0.05

# Dataclass field -> environment variable, for DIR/env and from_env().
ENV = {name: f"EYENET_TEST_{name.upper()}" for name in (
    "snmp_addr", "snmp_community", "snmp_v3_user", "snmp_v3_auth", "snmp_v3_priv",
    "node_exporter_url", "prometheus_url", "prometheus_targets")} | {"dir": "EYENET_TEST_COMPONENTS_DIR"}
PID_ENV = {name: f"EYENET_TEST_{name.upper()}_PID" for name in READY_S}


class ComponentError(RuntimeError):
    pass


@dataclass
class Components:
    snmp_addr: str  # 127.0.0.1:PORT (UDP)
    snmp_community: str  # v2c, read-only
    snmp_v3_user: str  # authPriv: SHA auth, AES priv
    snmp_v3_auth: str
    snmp_v3_priv: str
    node_exporter_url: str  # http://127.0.0.1:PORT/metrics
    prometheus_url: str  # http://127.0.0.1:PORT
    prometheus_targets: str  # file_sd directory of the `eyenet` job
    dir: str
    pids: dict[str, int] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)  # since the start, until ready
    started_here: bool = False  # this process started them, so it must stop them

    def env(self) -> dict[str, str]:
        return {var: getattr(self, name) for name, var in ENV.items()} | {
            PID_ENV[name]: str(pid) for name, pid in self.pids.items()}

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "started_here"}
        _atomic_write(Path(self.dir) / "components.json", json.dumps(data, indent=2) + "\n")
        lines = [f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items()]
        _atomic_write(Path(self.dir) / "env", "".join(lines))

    def stop(self) -> None:
        stop(self.dir)

    def restart_snmpd(self) -> None:
        self.pids["snmpd"] = restart_snmpd(self.dir)

    def add_scrape_target(self, host_port: str, labels: dict[str, str] | None = None) -> Path:
        return add_scrape_target(self.prometheus_targets, host_port, labels)

    def remove_scrape_target(self, host_port: str) -> None:
        remove_scrape_target(self.prometheus_targets, host_port)

    def wait_target_up(self, job: str, instance: str | None = None, timeout_s: float = 20.0) -> None:
        """Prometheus passes service-discovery changes on every 5 s: a new file_sd target
        may take ~6 s to be scraped, so wait for it rather than guess."""
        _wait(f"prometheus target {job}/{instance or '*'}", timeout_s,
              lambda: _target_up(self.prometheus_url, job, instance), Path(self.dir) / "prometheus.log")


# --- processes -------------------------------------------------------------------------------

def _free_port(kind: int) -> int:
    # Bind port 0 and hand the number over: a tiny race, but never a fixed port that the
    # distribution's daemons or another session's components hold.
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(d: Path, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> int:
    with open(d / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
        # A session of its own: the CLI can exit, and a Ctrl-C in the caller's terminal does
        # not take the components down in the middle of a test run's teardown.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=os.environ | (extra_env or {})).pid


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child, so it leaves no zombie
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie someone else reaps is gone too


def _ours(pid: int, marker: str) -> bool:
    """Whether pid still runs our command: pids get reused, and other snmpd or prometheus
    processes may run here (the distribution's, another session's). marker ends an argument
    (`...127.0.0.1:PORT`), so port 4000 does not match 40001."""
    try:
        return f"{marker}\0" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _terminate(pid: int, marker: str, deadline_s: float = 10.0) -> None:
    if not (_alive(pid) and _ours(pid, marker)):
        return
    os.kill(pid, signal.SIGTERM)  # on SIGTERM snmpd saves its v3 users (usmUser lines)
    end = time.monotonic() + deadline_s
    while _alive(pid) and time.monotonic() < end:
        time.sleep(POLL_S)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(POLL_S)


def _wait(what: str, timeout_s: float, ready: Callable[[], bool], log: Path, pid: int | None = None) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError, KeyError):  # not up yet, or half up
            if ready():
                return
        if pid is not None and not _alive(pid):
            raise ComponentError(f"{what} exited during start-up{_tail(log)}")
        time.sleep(POLL_S)
    raise ComponentError(f"{what} not ready after {timeout_s:.0f}s{_tail(log)}")


def _tail(log: Path, n: int = 20) -> str:
    lines = log.read_text(errors="replace").splitlines()[-n:] if log.exists() else []
    return f"; last lines of {log}:\n" + "\n".join(lines)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return r.status == 200


def _target_up(prometheus_url: str, job: str, instance: str | None) -> bool:
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets?state=active", timeout=1) as r:
        targets = json.load(r)["data"]["activeTargets"]
    return any(t["labels"].get("job") == job and t["health"] == "up"
               and instance in (None, t["labels"].get("instance")) for t in targets)


def _snmp_answers(addr: str, community: str) -> bool:
    """One SNMPv2c GET of sysUpTime.0 over UDP: a reply with our request id means it serves
    (no net-snmp CLI needed for the components themselves)."""
    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body  # short-form BER lengths: it is < 128 bytes

    req_id = secrets.token_bytes(3)
    varbind = tlv(0x30, tlv(0x06, bytes([0x2B, 6, 1, 2, 1, 1, 3, 0])) + b"\x05\x00")
    pdu = tlv(0xA0, tlv(0x02, b"\x01" + req_id) + tlv(0x02, b"\0") * 2 + tlv(0x30, varbind))
    msg = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x04, community.encode()) + pdu)
    host, port = addr.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(msg, (host, int(port)))
        try:
            return req_id in s.recv(4096)
        except TimeoutError:
            return False


# --- the three components ----------------------------------------------------------------------

def _start_snmpd(d: Path, port: int) -> int:
    # the agent's flags and files: jobs/snmp_agents.py (the sources benchmark starts the same)
    return _spawn(d, "snmpd", snmpd_argv(d, port), {"SNMP_PERSISTENT_DIR": str(d / "snmp")})


def _write_configs(d: Path, c: Components, node_port: int) -> None:
    write_agent_config(d, c.snmp_community, (c.snmp_v3_user, c.snmp_v3_auth, c.snmp_v3_priv))
    Path(c.prometheus_targets).mkdir()
    (d / "prometheus.yml").write_text(json.dumps({  # JSON is YAML: no yaml needed here
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]},
            {"job_name": "eyenet", "file_sd_configs": [
                {"files": [f"{c.prometheus_targets}/*.json"], "refresh_interval": "1s"}]},
        ]}, indent=2) + "\n")


def start_components(directory: str | Path) -> Components:
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if (d / "components.json").exists() and any(_alive(p) for p in _load(d).pids.values()):
        raise ComponentError(f"components already run from {d}; stop them first")
    if any(d.iterdir()):  # an earlier run's users, engineID and data would get in the way
        raise ComponentError(f"{d} is not empty; start in a new or empty directory")
    snmp_port = _free_port(socket.SOCK_DGRAM)
    node_port, prom_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_STREAM)
    c = Components(
        snmp_addr=f"127.0.0.1:{snmp_port}", snmp_community=secrets.token_hex(12),
        snmp_v3_user="eyenet-test", snmp_v3_auth=secrets.token_hex(12), snmp_v3_priv=secrets.token_hex(12),
        node_exporter_url=f"http://127.0.0.1:{node_port}/metrics", prometheus_url=f"http://127.0.0.1:{prom_port}",
        prometheus_targets=str(d / "eyenet_targets"), dir=str(d), started_here=True)
    _write_configs(d, c, node_port)
    t0 = time.monotonic()
    try:
        # All three start at once, then each is waited for by its own readiness condition.
        c.pids["snmpd"] = _start_snmpd(d, snmp_port)
        c.pids["node_exporter"] = _spawn(d, "node_exporter", [
            NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}",
            # Only cheap collectors that work in containers. Debian's build leaves lo out of
            # netdev by default (device-exclude=^lo$); an empty regexp puts it back.
            "--collector.disable-defaults", "--collector.netdev", "--collector.netdev.device-exclude=",
            "--collector.cpu", "--collector.meminfo", "--collector.loadavg"])
        c.pids["prometheus"] = _spawn(d, "prometheus", [
            PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"])
        c.save()  # from here on `stop --dir` finds them, even if a wait below fails
        checks = {
            "snmpd": lambda: _snmp_answers(c.snmp_addr, c.snmp_community),
            "node_exporter": lambda: _http_ok(c.node_exporter_url),
            "prometheus": lambda: _http_ok(f"{c.prometheus_url}/-/ready")
            and _target_up(c.prometheus_url, "node", None),
        }
        for name, ready in checks.items():
            _wait(name, READY_S[name], ready, d / f"{name}.log", c.pids[name])
            c.startup_s[name] = round(time.monotonic() - t0, 2)
    except BaseException:
        _stop_all(c)
        raise
    c.save()
    return c


def restart_snmpd(directory: str | Path) -> int:
    """Stop snmpd, start it again on the same port with the same config and persistent state
    (engineID, users): to a client, an agent restart (sysUpTime back to ~0). The new pid."""
    c = _load(directory)
    _terminate(c.pids["snmpd"], c.snmp_addr)
    c.pids["snmpd"] = _start_snmpd(Path(c.dir), int(c.snmp_addr.rsplit(":", 1)[1]))
    c.save()
    _wait("snmpd", READY_S["snmpd"], lambda: _snmp_answers(c.snmp_addr, c.snmp_community),
          Path(c.dir) / "snmpd.log", c.pids["snmpd"])
    return c.pids["snmpd"]


def stop(directory: str | Path) -> None:
    """SIGTERM each, wait, SIGKILL after a deadline. Nothing to do when nothing runs."""
    if (Path(directory) / "components.json").exists():
        _stop_all(_load(directory))  # the file has the current pids, also after a restart


def _stop_all(c: Components) -> None:
    markers = {"snmpd": c.snmp_addr, "node_exporter": c.node_exporter_url.split("/")[2],
               "prometheus": c.prometheus_url.split("/")[2]}
    for name, pid in c.pids.items():
        _terminate(pid, markers[name])


# --- scrape targets, for EyeNet's own /metrics ---------------------------------------------------

def _target_file(dir_or_env: str | Path | None, host_port: str) -> Path:
    d = Path(os.environ[ENV["prometheus_targets"]] if dir_or_env is None else dir_or_env)
    d = d / "eyenet_targets" if (d / "eyenet_targets").is_dir() else d
    return d / f"{host_port.replace(':', '_')}.json"


def add_scrape_target(dir_or_env: str | Path | None, host_port: str,
                      labels: dict[str, str] | None = None) -> Path:
    """Have Prometheus's `eyenet` job scrape http://host_port/metrics. dir_or_env: the
    components dir, its eyenet_targets dir, or None for $EYENET_TEST_PROMETHEUS_TARGETS."""
    path = _target_file(dir_or_env, host_port)
    _atomic_write(path, json.dumps([{"targets": [host_port], "labels": labels or {}}]) + "\n")
    return path


def remove_scrape_target(dir_or_env: str | Path | None, host_port: str) -> None:
    _target_file(dir_or_env, host_port).unlink(missing_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    # Written beside, then renamed: no reader (Prometheus, `source`) sees half a file, and the
    # temporary name does not match file_sd's *.json.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- for tests -----------------------------------------------------------------------------------

def _load(directory: str | Path) -> Components:
    return Components(**json.loads((Path(directory) / "components.json").read_text()))


def from_env(environ: dict[str, str] | None = None) -> Components | None:
    env = os.environ if environ is None else environ
    d = env.get(ENV["dir"])
    if d and (Path(d) / "components.json").exists():
        return _load(d)  # current pids, also after a restart-snmpd
    if not all(var in env for var in ENV.values()):
        return None
    pids = {name: int(env[var]) for name, var in PID_ENV.items() if var in env}
    return Components(**{name: env[var] for name, var in ENV.items()}, pids=pids)


def require_components() -> Components:
    """The components the environment names; else started here for this session when the
    binaries exist; else a skip, or under CI=true a failure (CI must never skip them)."""
    import pytest

    found = from_env()
    if found is not None:
        if dead := [name for name, pid in found.pids.items() if not _alive(pid)]:
            pytest.fail(f"{', '.join(dead)} from {found.dir} not running (an old env?); see its logs",
                        pytrace=False)
        return found
    missing = [b for b in (SNMPD, NODE_EXPORTER, PROMETHEUS, *SNMP_CLI) if not os.access(b, os.X_OK)]
    if missing:
        reason = (f"missing {', '.join(missing)} (apt-get install snmpd snmp prometheus "
                  f"prometheus-node-exporter) and {ENV['dir']} is not set")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    c = start_components(tempfile.mkdtemp(prefix="eyenet-components-"))
    atexit.register(c.stop)  # should the session end without the fixture's teardown
    os.environ.update(c.env())  # this session's subprocesses and Ray workers find them too
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.components", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "restart-snmpd"])
    parser.add_argument("--dir", required=True, help="configs, logs, data, env and components.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            c = start_components(args.dir)
            times = ", ".join(f"{k} {v}s" for k, v in c.startup_s.items())
            print(f"components ready ({times}); source {Path(c.dir) / 'env'}", file=sys.stderr)
        elif args.command == "stop":
            stop(args.dir)
        else:
            print(f"snmpd restarted, pid {restart_snmpd(args.dir)}", file=sys.stderr)
    except ComponentError as e:
        print(f"tests.components {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
