"""A Ray cluster whose autoscaler launches and removes nodes on this one machine, with
the node types of ``cluster.yaml``: Ray's ``fake_multinode`` provider (what
``ray.cluster_utils.AutoscalingCluster`` wraps; its template file is missing from the
2.60 wheel, and its start and shutdown run ``ray stop --force``, which would kill the test
suite's own cluster too).

What is simulated: every "node" is a raylet on this machine advertising the node type's
resources (a GPU node's ``GPU: 1`` is a label, not a device), launched and terminated by the
real autoscaler as demand rises and the node idles. What is not: cloud instances, setup
commands, file mounts, real GPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import free_port, processes_naming

RAY_CLI = Path(sys.executable).with_name("ray")
# `ray start` records the newest cluster here, and a later ray.init() without an address
# joins it; the suite's other tests must not find the fake cluster (or its corpse) there.
CURRENT_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")
EMPTY_LISTS = ["initialization_commands", "setup_commands", "head_setup_commands",
               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
               "cluster_synced_files", "rsync_exclude", "rsync_filter"]


def fake_config(cluster_yaml: Path, gcs_port: int, idle_timeout_minutes: float) -> dict[str, Any]:
    """The autoscaler config for the fake provider: ``cluster.yaml``'s node types (their
    resources, min and max workers) and limits, on this machine."""
    launcher = yaml.safe_load(cluster_yaml.read_text())
    head_type = launcher["head_node_type"]
    types = {name: {"resources": dict(spec["resources"]), "node_config": {},
                    "min_workers": spec.get("min_workers", 0), "max_workers": spec.get("max_workers", 0)}
             for name, spec in launcher["available_node_types"].items() if name != head_type}
    # the provider names the head's type itself
    types["ray.head.default"] = {"resources": dict(launcher["available_node_types"][head_type]["resources"]),
                                 "node_config": {}, "max_workers": 0}
    return {"cluster_name": f"{launcher['cluster_name']}-fake", "max_workers": launcher["max_workers"],
            "upscaling_speed": launcher.get("upscaling_speed", 1.0),
            "idle_timeout_minutes": idle_timeout_minutes,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "gcs_address": f"{node_ip()}:{gcs_port}"},
            "available_node_types": types, "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
            **{key: [] for key in EMPTY_LISTS}}


def node_ip() -> str:
    import ray._private.services

    return str(ray._private.services.get_node_ip_address())


class FakeAutoscalingCluster:
    def __init__(self, cluster_yaml: Path, workdir: Path, idle_timeout_minutes: float = 0.1) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.config = fake_config(cluster_yaml, self.gcs_port, idle_timeout_minutes)
        self.config_file = workdir / "fake-autoscaler.json"
        self.config_file.write_text(json.dumps(self.config))
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self._current_cluster = CURRENT_CLUSTER_FILE.read_bytes() if CURRENT_CLUSTER_FILE.exists() else None
        # the provider refuses to run without RAY_FAKE_CLUSTER; a status update each second
        # instead of five; token auth off: the job submitter has no token for a loopback cluster
        self.env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    "RAY_AUTH_MODE": "disabled"}

    def start(self) -> None:
        head = self.config["available_node_types"]["ray.head.default"]["resources"]
        try:
            subprocess.run([str(RAY_CLI), "start", "--head", f"--port={self.gcs_port}",
                            f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                            # not the default agent port: the suite's cluster, started next, needs it
                            f"--dashboard-agent-listen-port={free_port()}",
                            f"--num-cpus={int(head.get('CPU', 1))}", f"--num-gpus={int(head.get('GPU', 0))}",
                            f"--autoscaling-config={self.config_file}", "--disable-usage-stats"],
                           env=self.env, check=True, capture_output=True, text=True, timeout=120)
        finally:
            self._restore_current_cluster()

    def alive_nodes(self) -> dict[str, int]:
        """Alive nodes: ``head``, ``gpu`` (advertising a GPU) and ``cpu`` workers."""
        from ray.util.state import list_nodes

        counts: dict[str, int] = {}
        for node in list_nodes(address=self.dashboard_url, limit=1000, raise_on_missing_output=False):
            if node.state != "ALIVE":
                continue
            kind = "head" if node.is_head_node else "gpu" if node.resources_total.get("GPU") else "cpu"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def shutdown(self) -> None:
        """Kill every process of this cluster (found by its GCS port) and nothing else."""
        for attempt in range(3):
            found = {pid for text in (f":{self.gcs_port}", f"gcs_server_port={self.gcs_port}")
                     for pid, _ in processes_naming(text)}
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not found:
                break
            time.sleep(0.5 * (attempt + 1))  # workers the raylets were starting as we killed them
        self._restore_current_cluster()

    def _restore_current_cluster(self) -> None:
        if self._current_cluster is None:
            CURRENT_CLUSTER_FILE.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER_FILE.write_bytes(self._current_cluster)
