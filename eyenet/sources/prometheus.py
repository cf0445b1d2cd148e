"""Prometheus as a telemetry source: a node_exporter ``/metrics`` scrape, and a Prometheus
server's ``query_range`` API with one PromQL expression per metric.

Both return raw values (counters as counters): rates, wraps and resets are the telemetry
rules' job, the same as for every other source. Errors are :class:`PrometheusSourceError`
whose message names the URL and what was wrong (an HTML page, a PromQL error, too many
series), never a credential.
"""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from eyenet.sources.specs import NodeExporterSpec, PrometheusSpec

# what an exposition body starts with; a page that does not is not a scrape (an HTML login page)
EXPOSITION_TYPES = ("text/plain", "application/openmetrics-text")


class PrometheusSourceError(Exception):
    """One device's scrape or query failed."""


async def _get(session: aiohttp.ClientSession, url: str, timeout_s: float,
               params: dict[str, str] | None = None) -> tuple[int, str, str]:
    try:
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), await reply.text()
    except TimeoutError:
        raise PrometheusSourceError(f"{url}: no answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise PrometheusSourceError(f"{url}: {type(exc).__name__}: {exc}") from None


async def scrape(session: aiohttp.ClientSession, spec: NodeExporterSpec) -> dict[str, float]:
    """Config metric -> the exposition's counter summed over the chosen network devices."""
    status, content_type, body = await _get(session, spec.url, spec.timeout_s)
    if status != 200:
        raise PrometheusSourceError(f"{spec.url}: HTTP {status}")
    if content_type and not content_type.startswith(EXPOSITION_TYPES):
        raise PrometheusSourceError(f"{spec.url}: answered {content_type.split(';')[0]}, not the "
                                    "Prometheus text format")
    wanted = {name: metric for metric, name in spec.metrics.items()}
    sums: dict[str, float] = {}
    seen_devices: set[str] = set()
    try:
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                metric = wanted.get(sample.name)
                if metric is None:
                    continue
                device = sample.labels.get("device", "")
                seen_devices.add(device)
                chosen = (device == spec.interface if spec.interface is not None
                          else device not in spec.exclude_interfaces)
                if chosen and math.isfinite(sample.value):
                    sums[metric] = sums.get(metric, 0.0) + float(sample.value)
    except ValueError as exc:   # the official parser's verdict on a body that is not exposition text
        raise PrometheusSourceError(f"{spec.url}: not Prometheus text format ({exc})") from None
    if not sums:
        if spec.interface is not None and seen_devices:
            raise PrometheusSourceError(f"{spec.url}: no network device {spec.interface!r} "
                                        f"(has {', '.join(sorted(seen_devices))})")
        raise PrometheusSourceError(f"{spec.url}: none of {sorted(wanted)} in the scrape")
    return sums


def range_steps(since_ms: int, until_ms: int, step_ms: int) -> tuple[int, int] | None:
    """First and last step-grid time in ``(since_ms, until_ms]``; None when none is."""
    first = (since_ms // step_ms + 1) * step_ms
    last = until_ms // step_ms * step_ms
    return (first, last) if first <= last else None


async def query_range(session: aiohttp.ClientSession, spec: PrometheusSpec, metric: str,
                      start_ms: int, end_ms: int, step_ms: int) -> dict[int, float]:
    """Timestamp (ms) -> value of ``metric``'s expression on the step grid from start to end."""
    url = spec.url.rstrip("/") + "/api/v1/query_range"
    params = {"query": spec.queries[metric], "start": f"{start_ms / 1000:.3f}",
              "end": f"{end_ms / 1000:.3f}", "step": f"{step_ms / 1000:g}"}
    status, _, body = await _get(session, url, spec.timeout_s, params)
    try:
        answer: Any = json.loads(body)
    except ValueError:
        raise PrometheusSourceError(f"{url}: HTTP {status}, not a Prometheus API answer") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error", "") if isinstance(answer, dict) else ""
        kind = answer.get("errorType", "") if isinstance(answer, dict) else ""
        raise PrometheusSourceError(f"{url}: query for {metric} ({spec.queries[metric]!r}) failed: "
                                    f"HTTP {status} {kind} {error}".rstrip())
    result = answer.get("data", {}).get("result", [])
    if len(result) > 1:
        raise PrometheusSourceError(f"{url}: query for {metric} returned {len(result)} series; "
                                    "make it one (aggregate with sum())")
    values: dict[int, float] = {}
    for ts_s, text in (result[0].get("values", []) if result else []):
        try:
            values[round(float(ts_s) * 1000)] = float(text)
        except (TypeError, ValueError):
            raise PrometheusSourceError(f"{url}: query for {metric} returned a non-number {text!r}") from None
    return values
