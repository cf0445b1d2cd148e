"""Devices and where their telemetry comes from, as the YAML config lists them.

```yaml
devices:
  - id: core-sw-1
    snmp: {host: 10.0.0.1, version: "3", user: eyenet,
           auth_key_env: SNMP_AUTH_KEY, priv_key_env: SNMP_PRIV_KEY}
    latency_probe: {kind: tcp, port: 22}
  - id: web-1
    node_exporter: {url: "http://web-1:9100/metrics", interface: eth0}
  - id: edge-7
    prometheus:
      url: "http://prometheus:9090"
      queries: {bytes_in: 'sum(node_network_receive_bytes_total{instance="edge-7:9100"})'}
```

Credentials are never values in the file: a spec names the *environment variable* that
holds each one (``community_env``, ``auth_key_env``, ``priv_key_env``), read when the
source starts, so neither the file nor a config error nor a log can show them.

This module knows no other part of EyeNet: the config embeds it, the live source reads it.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eyenet.errors import SourceError

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")

# IF-MIB counters by the name a spec maps a metric to; 64-bit ifXTable first, then the
# 32-bit ifTable column an agent without ifHC* counters is polled on instead.
IF_COUNTERS = {
    "in_octets": ("1.3.6.1.2.1.31.1.1.1.6", "1.3.6.1.2.1.2.2.1.10"),        # ifHCInOctets, ifInOctets
    "out_octets": ("1.3.6.1.2.1.31.1.1.1.10", "1.3.6.1.2.1.2.2.1.16"),      # ifHCOutOctets, ifOutOctets
    "in_ucast_packets": ("1.3.6.1.2.1.31.1.1.1.7", "1.3.6.1.2.1.2.2.1.11"),  # ifHCInUcastPkts
    "out_ucast_packets": ("1.3.6.1.2.1.31.1.1.1.11", "1.3.6.1.2.1.2.2.1.17"),  # ifHCOutUcastPkts
}
DEFAULT_SNMP_METRICS = {"bytes_in": "in_octets", "bytes_out": "out_octets",
                        "packets_in": "in_ucast_packets", "packets_out": "out_ucast_packets"}
DEFAULT_NODE_METRICS = {"bytes_in": "node_network_receive_bytes_total",
                        "bytes_out": "node_network_transmit_bytes_total",
                        "packets_in": "node_network_receive_packets_total",
                        "packets_out": "node_network_transmit_packets_total"}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _env_name(value: str | None) -> str | None:
    if value is not None and not ENV_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (credentials are read "
                         "from the environment, never written in the config)")
    if value is not None and value.startswith("EYENET_"):
        # EYENET_* variables are config overrides (eyenet.config.load_config reads them all)
        raise ValueError(f"{value!r}: EYENET_* variables are config overrides; name the credential's "
                         "variable otherwise (e.g. SNMP_COMMUNITY)")
    return value


class SnmpSpec(_Spec):
    """One SNMP agent: the device is the agent (its interfaces summed) or one interface."""

    host: str = Field(min_length=1)
    port: int = Field(161, ge=1, le=65535)
    version: Literal["2c", "3"] = "2c"
    community_env: str | None = Field(
        "SNMP_COMMUNITY", description="environment variable holding the v2c community")
    user: str | None = Field(None, description="v3 user (USM security name)")
    auth_protocol: Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512", "none"] = "sha"
    auth_key_env: str | None = Field(None, description="environment variable with the v3 auth passphrase")
    priv_protocol: Literal["des", "3des", "aes", "aes192", "aes256", "none"] = "aes"
    priv_key_env: str | None = Field(None, description="environment variable with the v3 privacy passphrase")
    interface: str | None = Field(None, description="ifName or ifDescr of the one interface this device "
                                                    "is; default: the agent, all interfaces summed")
    exclude_interfaces: list[str] = Field(default_factory=list,
                                          description="interfaces left out of the agent's sum (e.g. lo)")
    metrics: dict[str, Literal["in_octets", "out_octets", "in_ucast_packets", "out_ucast_packets"]] = Field(
        default_factory=lambda: dict(DEFAULT_SNMP_METRICS),
        description="config metric -> IF-MIB counter; metrics not in the config are skipped")
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=10)
    max_repetitions: int = Field(25, ge=1, le=200, description="GETBULK rows per request")

    @field_validator("community_env", "auth_key_env", "priv_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return _env_name(value)

    @model_validator(mode="after")
    def _credentials(self) -> SnmpSpec:
        if self.version == "3":
            if not self.user:
                raise ValueError("SNMP v3 needs user")
            if self.auth_protocol != "none" and not self.auth_key_env:
                raise ValueError(f"SNMP v3 with auth_protocol {self.auth_protocol!r} needs auth_key_env")
            if self.priv_protocol != "none" and (self.auth_protocol == "none" or not self.priv_key_env):
                raise ValueError("SNMP v3 privacy needs authentication and priv_key_env")
        elif not self.community_env:
            raise ValueError("SNMP v2c needs community_env")
        return self


class ProbeSpec(_Spec):
    """Latency as the time to reach the device: a TCP connect, or an ICMP echo."""

    kind: Literal["tcp", "icmp"] = "tcp"
    host: str | None = Field(None, description="default: the SNMP agent's or scrape URL's host")
    port: int = Field(22, ge=1, le=65535, description="TCP port connected to (tcp only)")
    timeout_s: float = Field(1.0, gt=0, le=60)


class NodeExporterSpec(_Spec):
    """A Prometheus exposition endpoint scraped directly (node_exporter's ``/metrics``)."""

    url: str = Field(pattern=r"^https?://")
    interface: str | None = Field(None, description="the one network device (label ``device``); "
                                                    "default: all of them summed")
    exclude_interfaces: list[str] = Field(default_factory=list)
    metrics: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_NODE_METRICS),
                                    description="config metric -> exposition metric name")
    timeout_s: float = Field(2.0, gt=0, le=60)


class PrometheusSpec(_Spec):
    """A Prometheus server's HTTP API, one PromQL expression per metric (``query_range``).

    An expression for a counter metric returns the counter itself (EyeNet makes the rate,
    wraps and resets included); each must return exactly one series (aggregate with sum).
    """

    url: str = Field(pattern=r"^https?://")
    queries: dict[str, str] = Field(min_length=1)
    step_s: float | None = Field(None, gt=0, description="default: the config's sample_interval_s")
    lag_s: float = Field(10.0, ge=0, description="queries run this far behind now, so that the "
                                                 "server has scraped the span they ask for")
    timeout_s: float = Field(5.0, gt=0, le=120)


class DeviceSpec(_Spec):
    id: str
    snmp: SnmpSpec | None = None
    node_exporter: NodeExporterSpec | None = None
    prometheus: PrometheusSpec | None = None
    latency_probe: ProbeSpec | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not DEVICE_ID_RE.match(value):
            raise ValueError(f"device id {value!r} must match {DEVICE_ID_RE.pattern}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DeviceSpec:
        given = [k for k in ("snmp", "node_exporter", "prometheus") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"device {self.id!r} names {given}: give exactly one source")
        if not given and self.latency_probe is None:
            raise ValueError(f"device {self.id!r} has no source: give snmp, node_exporter, "
                             "prometheus or latency_probe")
        if self.latency_probe and self.latency_probe.host is None and self.probe_host() is None:
            raise ValueError(f"device {self.id!r}: latency_probe needs host")
        return self

    @property
    def kind(self) -> str:
        for kind in ("snmp", "node_exporter", "prometheus"):
            if getattr(self, kind) is not None:
                return kind
        return "probe"

    def mapped_metrics(self) -> dict[str, str]:
        """Config metric -> what this device's source reads for it (a counter or a query)."""
        if self.snmp:
            return dict(self.snmp.metrics)
        if self.node_exporter:
            return dict(self.node_exporter.metrics)
        if self.prometheus:
            return dict(self.prometheus.queries)
        return {}

    def probe_host(self) -> str | None:
        if self.latency_probe and self.latency_probe.host:
            return self.latency_probe.host
        if self.snmp:
            return self.snmp.host
        url = (self.node_exporter or self.prometheus).url if (self.node_exporter or self.prometheus) else None
        if url:
            return re.sub(r"^https?://(\[[^\]]+\]|[^:/]+).*$", r"\1", url).strip("[]")
        return None


def check_devices(devices: list[DeviceSpec], metrics: list[str], counter_metrics: list[str]) -> None:
    """Cross-checks the config makes once: unique ids; mapped metrics are configured; a
    probe fills ``latency`` only if it is a metric; SNMP counters only feed counter metrics."""
    seen: set[str] = set()
    for i, spec in enumerate(devices):
        where = f"devices[{i}] (id {spec.id!r})"
        if spec.id in seen:
            raise ValueError(f"{where}: device id {spec.id!r} is listed twice")
        seen.add(spec.id)
        for metric in spec.mapped_metrics():
            if metric not in metrics:
                raise ValueError(f"{where} maps metric {metric!r}, which is not in metrics {metrics}")
            if (spec.snmp or spec.node_exporter) and metric not in counter_metrics:
                raise ValueError(f"{where}: {metric!r} is read from a counter, so it must be in "
                                 f"counter_metrics {counter_metrics}")
        if spec.latency_probe and "latency" not in metrics:
            raise ValueError(f"{where} has a latency_probe but 'latency' is not in metrics")


def secret(env_name: str | None, what: str, device_id: str) -> str:
    """The credential held by ``env_name``. Errors name the variable, never a value."""
    value = os.environ.get(env_name or "")
    if not value:
        raise SourceError(f"device {device_id!r}: environment variable {env_name} ({what}) is not set",
                          source="devices")
    return value
