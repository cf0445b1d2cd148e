"""Running net-snmp's ``snmpd`` as a private loopback agent: for the sources benchmark, and
for the test suite's components (tests/components.py). Standard library only.

An agent runs in the foreground of its own session with everything under its directory:
its config (``-C``: none of /etc/snmp), its persistent state (``SNMP_PERSISTENT_DIR``: the
engine id, boots and v3 users, never /var/lib/snmp) and its log. It serves this machine's
own interfaces (IF-MIB), on ``udp:127.0.0.1:PORT`` only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SNMPD = "/usr/sbin/snmpd"


def snmpd_installed() -> bool:
    return os.access(SNMPD, os.X_OK) or shutil.which("snmpd") is not None


def snmpd_argv(directory: Path, port: int) -> list[str]:
    """-C skips the persistent snmpd.conf too, so -c names it as well (createUser lines must
    be read from there; snmpd turns them into usmUser lines on exit). -A appends to the log
    across restarts. -m '': no MIB files (Debian ships few; the agent needs none). -I -smux:
    SMUX would listen on TCP 199 and clash with any other snmpd. It stays root (no -u/-g)."""
    d = Path(directory)
    return [shutil.which("snmpd") or SNMPD, "-f", "-A", "-Lf", str(d / "snmpd.log"), "-C",
            "-c", f"{d / 'snmpd.conf'},{d / 'snmp' / 'snmpd.conf'}", "-m", "",
            "-I", "-smux,mteTrigger,mteTriggerConf", "-p", str(d / "snmpd.pid"), f"udp:127.0.0.1:{port}"]


def write_agent_config(directory: Path, community: str, v3_user: tuple[str, str, str] | None = None) -> None:
    """A read-only v2c community for 127.0.0.1; ``COMMUNITY-system``, a second one that sees
    only the system group (the agent as one without IF-MIB looks); given (user, auth, priv),
    a v3 authPriv user (SHA, AES). ``dontLogTCPWrappersConnects``: no log line per request."""
    d = Path(directory)
    (d / "snmp").mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [f"rocommunity {community} 127.0.0.1", "view systemonly included .1.3.6.1.2.1.1",
             f"rocommunity {system_only_community(community)} 127.0.0.1 -V systemonly",
             "dontLogTCPWrappersConnects yes"]
    if v3_user:
        lines.insert(1, f"rouser {v3_user[0]} priv")
        (d / "snmp" / "snmpd.conf").write_text(f"createUser {v3_user[0]} SHA {v3_user[1]} AES {v3_user[2]}\n")
    (d / "snmpd.conf").write_text("\n".join(lines) + "\n")


def system_only_community(community: str) -> str:
    return f"{community}-system"


def start_agent(directory: Path, port: int) -> subprocess.Popen:
    """Start the agent configured in ``directory`` (see :func:`write_agent_config`)."""
    d = Path(directory)
    with open(d / "snmpd.stdout", "ab") as log:   # the child keeps its own descriptor
        # a session of its own: a Ctrl-C in the caller's terminal does not reach it mid-teardown
        return subprocess.Popen(snmpd_argv(d, port), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"SNMP_PERSISTENT_DIR": str(d / "snmp")})
