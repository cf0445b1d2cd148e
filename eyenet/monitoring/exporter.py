"""EyeNet's own metrics in Prometheus' text format, from plain snapshots (Ray-free).

The figures live in other processes (the monitor actor, the collectors, the store and the
registry); the API gathers a :class:`MetricsSnapshot` of them per scrape and this module
translates it. A custom collector over that snapshot, rather than prometheus_client's
global ``Gauge``/``Counter`` objects, means each scrape shows the state of now, two ingress
replicas never export two different counts of one thing, and nothing leaks between
registries or tests. Counters are their owners' cumulative counts: the monitor's since it
started, the collectors' since their state was first saved (they persist them); an owner's
restart reads as a counter reset, which ``rate()`` absorbs.

Every family is declared once in :data:`METRICS`: the collector can emit only declared
families, and the dashboard test checks its queries against :func:`series_names`. A part
that did not answer is absent from the snapshot: its families are exported empty and
``eyenet_component_up`` says 0 for it, so a scrape never fails because of it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from eyenet.monitoring.alerts import ALERT_KINDS
from eyenet.monitoring.monitor import DEVICE_STATES

__all__ = ["COMPONENTS", "CONTENT_TYPE_LATEST", "METRICS", "MetricSpec", "MetricsSnapshot",
           "SnapshotCollector", "render", "series_names"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# the parts a scrape gathers from; each gets an eyenet_component_up sample once asked
COMPONENTS = ("monitor", "collectors", "store", "registry")


@dataclass(frozen=True)
class MetricSpec:
    """One exported family. ``name`` is the name as exposed: counters end in ``_total``."""

    name: str
    kind: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...] = ()


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("eyenet_component_up", "gauge", "1 when the part answered this scrape, 0 when it did "
               "not (monitor, collectors: the collector list, store, registry)", ("component",)),
    MetricSpec("eyenet_production_model_version", "gauge",
               "the registry's production version of the model (absent: none)", ("model",)),
    # per device, from the monitor
    MetricSpec("eyenet_device_anomaly_score", "gauge", "the device's newest calibrated anomaly score (0..1)",
               ("device",)),
    MetricSpec("eyenet_device_threshold", "gauge", "the threshold the device's newest score was judged "
               "against", ("device",)),
    MetricSpec("eyenet_device_state", "gauge", "1 for the device's state (learning: never alerting yet; "
               "judged; anomalous: an open device_anomaly alert), 0 for the others", ("device", "state")),
    MetricSpec("eyenet_device_last_scored_timestamp_seconds", "gauge",
               "when the monitor last heard of a score of the device (Unix time)", ("device",)),
    MetricSpec("eyenet_scored_points_total", "counter", "points of the device scored", ("device",)),
    MetricSpec("eyenet_anomaly_points_total", "counter", "points of the device scored as anomalous",
               ("device",)),
    # fleet-wide, from the monitor
    MetricSpec("eyenet_open_alerts", "gauge", "open alerts by kind", ("kind",)),
    MetricSpec("eyenet_scoring_latency_seconds", "histogram", "time to score one batch"),
    MetricSpec("eyenet_drift_score", "gauge", "the feature's drift from the production model's training "
               "reference (PSI or KS)", ("feature",)),
    MetricSpec("eyenet_drift_threshold", "gauge", "drift score above which a drift alert fires"),
    # per collector
    MetricSpec("eyenet_collector_up", "gauge", "1 when the collector answered this scrape", ("collector",)),
    MetricSpec("eyenet_collector_samples_fetched_total", "counter", "samples fetched from the source",
               ("collector",)),
    MetricSpec("eyenet_collector_samples_stored_total", "counter", "samples newly written to the store",
               ("collector",)),
    MetricSpec("eyenet_collector_samples_duplicate_total", "counter",
               "samples the store already held (a retried write)", ("collector",)),
    MetricSpec("eyenet_collector_samples_repaired_total", "counter", "repairs by rule (reason) and metric "
               "(a sample repaired in two metrics counts twice)", ("collector", "reason", "metric")),
    MetricSpec("eyenet_collector_samples_rejected_total", "counter", "samples rejected, by reason "
               "(and metric, for a per-metric reason)", ("collector", "reason", "metric")),
    MetricSpec("eyenet_collector_errors_total", "counter", "failed polls by what failed: source, store "
               "or device", ("collector", "reason")),
    MetricSpec("eyenet_collector_pending_samples", "gauge", "accepted samples waiting for the store",
               ("collector",)),
    MetricSpec("eyenet_collector_lag_seconds", "gauge", "how far the oldest device cursor is behind "
               "the source's now", ("collector",)),
)}


def series_names() -> dict[str, tuple[MetricSpec, tuple[str, ...]]]:
    """Every sample name the exporter writes, with its family and the labels it carries
    (a histogram's ``_bucket`` adds ``le``); what a PromQL query may name."""
    out: dict[str, tuple[MetricSpec, tuple[str, ...]]] = {}
    for spec in METRICS.values():
        if spec.kind == "histogram":
            out[f"{spec.name}_bucket"] = (spec, (*spec.labels, "le"))
            out[f"{spec.name}_count"] = out[f"{spec.name}_sum"] = (spec, spec.labels)
        else:
            out[spec.name] = (spec, spec.labels)
    return out


@dataclass
class MetricsSnapshot:
    """What one scrape gathered, as plain data; a part that did not answer is left empty.

    ``monitor``: :meth:`eyenet.monitoring.monitor.Monitor.metrics`; ``collectors``:
    :meth:`eyenet.streaming.collector.Collector.stats` by collector label; ``open_alerts``:
    by kind, read from the store, used only when the monitor did not answer.
    """

    monitor: dict[str, Any] | None = None
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    collectors_down: list[str] = field(default_factory=list)
    production: dict[str, int | None] = field(default_factory=dict)
    open_alerts: dict[str, int] | None = None
    components: dict[str, bool] = field(default_factory=dict)

    def attempt(self, component: str, read: Callable[[], T]) -> T | None:
        """``read()``, or None with ``component`` marked down when it fails: the error is
        logged, never raised, so a part that is down cannot fail the scrape."""
        try:
            value = read()
        except Exception as exc:  # whatever a broken part raises, the scrape goes on
            self.down(component, exc)
            return None
        self.components.setdefault(component, True)
        return value

    def down(self, component: str, exc: BaseException | None = None) -> None:
        self.components[component] = False
        if exc is not None:
            log.warning("metrics: %s unavailable: %s: %s", component, type(exc).__name__, exc)


class SnapshotCollector(Collector):
    """A prometheus_client collector over a snapshot, or a function returning one per scrape."""

    def __init__(self, snapshot: MetricsSnapshot | Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return list(_Families().families.values())

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot() if callable(self._snapshot) else self._snapshot
        out = _Families()
        for name, part in (("components", _components), ("registry", _production), ("alerts", _alerts),
                           ("devices", _devices), ("drift", _drift), ("latency", _latency),
                           ("collectors", _collectors)):
            try:
                part(out, snap)
            except Exception as exc:  # malformed data of one part must not lose the others
                log.warning("metrics: %s figures not exported: %s: %s", name, type(exc).__name__, exc)
        yield from out.families.values()


def render(snapshot: MetricsSnapshot | Callable[[], MetricsSnapshot]) -> bytes:
    """The exposition body (``CONTENT_TYPE_LATEST``) of one snapshot, in a fresh registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


class _Families:
    """One empty family per declared metric; ``add`` skips values that are not finite
    numbers (no figure: a score not known yet) and repeated label sets (Prometheus would
    refuse the whole scrape for one)."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {name: _family(spec) for name, spec in METRICS.items()}
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(self, name: str, labels: Sequence[Any], value: Any) -> None:
        number, key = _number(value), (name, tuple(str(x) for x in labels))
        if number is None or key in self._seen:
            return
        self._seen.add(key)
        self.families[name].add_metric(list(key[1]), number)

    def histogram(self, name: str, buckets: list[tuple[float, int]], sum_value: float) -> None:
        self.families[name].add_metric([], [(floatToGoString(b), float(c)) for b, c in buckets], sum_value)


def _family(spec: MetricSpec) -> Metric:
    kind = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}
    return kind[spec.kind](spec.name, spec.help, labels=list(spec.labels))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _components(out: _Families, snap: MetricsSnapshot) -> None:
    for component in (*COMPONENTS, *sorted(set(snap.components) - set(COMPONENTS))):
        if component in snap.components:
            out.add("eyenet_component_up", [component], snap.components[component])


def _production(out: _Families, snap: MetricsSnapshot) -> None:
    for model, version in sorted(snap.production.items()):
        out.add("eyenet_production_model_version", [model], version)


def _alerts(out: _Families, snap: MetricsSnapshot) -> None:
    open_alerts = snap.monitor.get("open_alerts") if snap.monitor is not None else snap.open_alerts
    if open_alerts is not None:
        for kind in dict.fromkeys((*ALERT_KINDS, *open_alerts)):
            out.add("eyenet_open_alerts", [kind], open_alerts.get(kind, 0))


def _devices(out: _Families, snap: MetricsSnapshot) -> None:
    seen: set[str] = set()
    for row in (snap.monitor or {}).get("devices", []):
        device = str(row["device_id"])
        if device in seen:  # a repeated row: the first one stands, whole
            continue
        seen.add(device)
        out.add("eyenet_device_anomaly_score", [device], row.get("score"))
        out.add("eyenet_device_threshold", [device], row.get("threshold"))
        out.add("eyenet_device_last_scored_timestamp_seconds", [device], row.get("last_scored_s"))
        out.add("eyenet_scored_points_total", [device], row.get("scored", 0))
        out.add("eyenet_anomaly_points_total", [device], row.get("anomalies", 0))
        for state in DEVICE_STATES:
            out.add("eyenet_device_state", [device, state], row.get("state") == state)


def _drift(out: _Families, snap: MetricsSnapshot) -> None:
    m = snap.monitor or {}
    for feature, score in sorted((m.get("drift") or {}).items()):
        out.add("eyenet_drift_score", [feature], score)
    out.add("eyenet_drift_threshold", [], m.get("drift_threshold"))


def _latency(out: _Families, snap: MetricsSnapshot) -> None:
    buckets = (snap.monitor or {}).get("latency_buckets")
    if buckets:
        bounds, counts = list(buckets["bounds_s"]), [int(c) for c in buckets["counts"]]
        if len(counts) != len(bounds) + 1:
            raise ValueError(f"{len(bounds)} latency bounds need {len(bounds) + 1} counts, got {len(counts)}")
        pairs = list(zip([*bounds, math.inf], itertools.accumulate(counts), strict=True))
        out.histogram("eyenet_scoring_latency_seconds", pairs, float(buckets.get("sum_s", 0.0)))


def _collectors(out: _Families, snap: MetricsSnapshot) -> None:
    for name in snap.collectors_down:
        out.add("eyenet_collector_up", [name], 0)
    for name, stats in sorted(snap.collectors.items()):
        totals = stats.get("totals") or {}
        out.add("eyenet_collector_up", [name], 1)
        out.add("eyenet_collector_samples_fetched_total", [name], totals.get("fetched", 0))
        out.add("eyenet_collector_samples_stored_total", [name], totals.get("stored", 0))
        out.add("eyenet_collector_samples_duplicate_total", [name], totals.get("store_duplicates", 0))
        for family, key in (("eyenet_collector_samples_repaired_total", "repaired"),
                            ("eyenet_collector_samples_rejected_total", "rejected")):
            for reason_metric, n in sorted((stats.get(key) or {}).items()):
                # the validator's per-metric keys read "reason:metric"
                reason, _, metric = str(reason_metric).partition(":")
                out.add(family, [name, reason, metric], n)
        device_errors = sum((stats.get("device_errors") or {}).values())
        for reason, n in (("source", totals.get("source_errors", 0)),
                          ("store", totals.get("store_errors", 0)), ("device", device_errors)):
            out.add("eyenet_collector_errors_total", [name, reason], n)
        out.add("eyenet_collector_pending_samples", [name], stats.get("pending_samples"))
        out.add("eyenet_collector_lag_seconds", [name], stats.get("lag_s"))
