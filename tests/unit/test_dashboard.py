"""The shipped Grafana dashboard (dashboards/eyenet.json): a valid dashboard whose every
PromQL expression parses and names only metrics and labels the exporter exports.

The exported names come from :func:`eyenet.monitoring.exporter.series_names`, never a copy.
No PromQL library is a dependency, so a small recursive-descent parser of the PromQL the
dashboard uses (selectors, ranges, functions, aggregations with grouping, binary operators
with matching) lives here; an unknown function or a syntax error fails the check too.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from eyenet.monitoring.exporter import series_names

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "eyenet.json"
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
                "count_values", "group"}
FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "abs", "ceil",
             "floor", "round", "clamp", "clamp_min", "clamp_max", "exp", "ln", "log2", "log10", "sqrt",
             "absent", "absent_over_time", "changes", "resets", "scalar", "vector", "time", "timestamp",
             "sort", "sort_desc", "label_replace", "label_join", "predict_linear",
             *(f"{a}_over_time" for a in ("avg", "min", "max", "sum", "count", "last", "quantile",
                                          "stddev", "stdvar"))}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless"}
BINARY = {"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"}
TOKEN = re.compile(r"""\s*(?:(?P<duration>\d+(?:ms|[smhdwy])(?![\w:]))
                    |(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
                    |(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|(?P<ident>[A-Za-z_:][\w:]*)
                    |(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],:]))""", re.VERBOSE)
GRAFANA_DURATIONS = {"__rate_interval", "__range", "__interval"}


class PromQLError(ValueError):
    pass


def tokens(expr: str) -> list[tuple[str, str]]:
    # Grafana's variables: durations become one, others (inside matcher strings) a value
    expr = re.sub(r"\$\{?(\w+)\}?", lambda m: "5m" if m.group(1) in GRAFANA_DURATIONS else "x", expr)
    out, pos = [], 0
    while pos < len(expr.rstrip()):
        match = TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r}")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return out


class Parser:
    """Collects ``selectors`` (metric, matcher labels) and ``grouping`` labels as it parses."""

    def __init__(self, expr: str) -> None:
        self.toks, self.i = tokens(expr), 0
        self.selectors: list[tuple[str, set[str]]] = []
        self.grouping: set[str] = set()
        self.expr()
        if self.i != len(self.toks):
            raise PromQLError(f"unexpected {self.peek()!r}")

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, want: str | None = None, kind: str | None = None) -> str:
        if self.i >= len(self.toks):
            raise PromQLError(f"expression ends where {want or kind} was expected")
        k, v = self.toks[self.i]
        if (want is not None and v != want) or (kind is not None and k != kind):
            raise PromQLError(f"expected {want or kind}, found {v!r}")
        self.i += 1
        return v

    def expr(self) -> None:
        self.unary()
        while self.peek() in BINARY:
            self.take()
            if self.peek() == "bool":
                self.take()
            if self.peek() in ("on", "ignoring"):
                self.take()
                self.labels()
            if self.peek() in ("group_left", "group_right"):
                self.take()
                if self.peek() == "(":
                    self.labels()
            self.unary()

    def unary(self) -> None:
        while self.peek() in ("-", "+"):
            self.take()
        self.primary()
        if self.peek() == "[":
            self.take("[")
            self.take(kind="duration")
            if self.peek() == ":":  # a subquery
                self.take(":")
                if self.peek() != "]":
                    self.take(kind="duration")
            self.take("]")
        if self.peek() == "offset":
            self.take()
            self.take(kind="duration")

    def primary(self) -> None:
        kind, value = self.toks[self.i] if self.i < len(self.toks) else (None, None)
        if kind in ("number", "string"):
            self.take()
        elif value == "(":
            self.take("(")
            self.expr()
            self.take(")")
        elif value == "{":
            self.selectors.append(("", self.matchers()))
        elif kind == "ident" and value in AGGREGATIONS:
            self.take()
            if self.peek() in ("by", "without"):
                self.take()
                self.labels()
            self.call()
            if self.peek() in ("by", "without"):
                self.take()
                self.labels()
        elif kind == "ident" and self.i + 1 < len(self.toks) and self.toks[self.i + 1][1] == "(":
            if value not in FUNCTIONS:
                raise PromQLError(f"unknown function {value!r}")
            self.take()
            self.call()
        elif kind == "ident" and value not in KEYWORDS:
            self.take()
            self.selectors.append((value, self.matchers() if self.peek() == "{" else set()))
        else:
            raise PromQLError(f"unexpected {value!r}")

    def call(self) -> None:
        self.take("(")
        if self.peek() != ")":
            self.expr()
            while self.peek() == ",":
                self.take(",")
                self.expr()
        self.take(")")

    def labels(self) -> None:
        self.take("(")
        while self.peek() != ")":
            self.grouping.add(self.take(kind="ident"))
            if self.peek() == ",":
                self.take(",")
        self.take(")")

    def matchers(self) -> set[str]:
        self.take("{")
        names = set()
        while self.peek() != "}":
            names.add(self.take(kind="ident"))
            if self.peek() not in ("=", "!=", "=~", "!~"):
                raise PromQLError(f"expected a label matcher, found {self.peek()!r}")
            self.take()
            self.take(kind="string")
            if self.peek() == ",":
                self.take(",")
        self.take("}")
        return names


def problems(dashboard: dict) -> list[str]:
    """Every expression of the dashboard that does not parse, or names a metric or label
    the exporter does not export; empty when all is well."""
    exported = series_names()
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target.get("expr")
            where = f"panel {panel.get('title')!r} target {target.get('refId')}"
            try:
                parsed = Parser(expr)
            except PromQLError as exc:
                out.append(f"{where}: {expr!r} does not parse: {exc}")
                continue
            labels = {"le"}
            for metric, matched in parsed.selectors:
                if metric not in exported:
                    out.append(f"{where}: {metric or '{...}'!r} is not an exported metric")
                    continue
                labels |= set(exported[metric][1])
                if matched - set(exported[metric][1]):
                    out.append(f"{where}: {metric} has no label {sorted(matched - set(exported[metric][1]))}")
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            for name in sorted((parsed.grouping | legend) - labels):
                out.append(f"{where}: no metric of {expr!r} carries the label {name!r}")
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_expression_parses_and_names_exported_metrics(dashboard):
    assert problems(dashboard) == []
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10


def test_the_check_fails_on_an_unknown_metric_label_function_or_syntax(dashboard):
    bad = copy.deepcopy(dashboard)
    panel = next(p for p in bad["panels"] if p.get("targets"))
    panel["targets"] = [{"refId": "A", "expr": e} for e in (
        "rate(eyenet_bogus_total[5m])",                     # no such metric
        "rate(eyenet_anomaly_points[5m])",                  # the counter is exposed with _total
        'eyenet_drift_score{device="r1"}',                  # a label the family does not carry
        "sum by (collector) (eyenet_device_anomaly_score)",  # grouping by a label it lacks
        "rates(eyenet_anomaly_points_total[5m])",           # an unknown function
        "sum(rate(eyenet_anomaly_points_total[5m])",        # unbalanced
    )]
    found = problems(bad)
    assert len(found) == 6, found
    assert "eyenet_bogus_total" in found[0] and "'eyenet_anomaly_points'" in found[1]
    assert "device" in found[2] and "collector" in found[3]
    assert "rates" in found[4] and "does not parse" in found[5]


def test_parser_reads_selectors_and_grouping():
    parsed = Parser('topk(10, sum by (device) (increase(eyenet_anomaly_points_total{device=~"$device"}'
                    "[$__range])) / on (device) sum by (device) (eyenet_scored_points_total)) > bool 0.5")
    assert parsed.selectors == [("eyenet_anomaly_points_total", {"device"}),
                                ("eyenet_scored_points_total", set())]
    assert parsed.grouping == {"device"}


def test_it_is_a_grafana_dashboard_with_a_prometheus_datasource_variable(dashboard):
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    device = variables["device"]
    assert device["type"] == "query" and device["datasource"]["uid"] == "${datasource}"
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", device["query"]["query"]).groups()
    assert device["definition"] == device["query"]["query"]
    assert metric.startswith("eyenet_") and label == "device" and "device" in series_names()[metric][1]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"} and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])


@pytest.mark.parametrize(("title", "metric"), [
    ("Fleet anomaly rate", "eyenet_anomaly_points_total"),
    ("Top anomalous devices", "eyenet_anomaly_points_total"),
    ("Anomaly score and threshold: $device", "eyenet_device_threshold"),
    ("Drift per feature", "eyenet_drift_score"),
    ("Scoring latency", "eyenet_scoring_latency_seconds_bucket"),
])
def test_the_promised_panels_are_there(dashboard, title, metric):
    panel = next(p for p in dashboard["panels"] if p["title"] == title)
    assert any(metric in {m for m, _ in Parser(t["expr"]).selectors} for t in panel["targets"])
