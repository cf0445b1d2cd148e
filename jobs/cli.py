"""The ``eyenet`` command: the front door to everything a user runs.

Each sub-command is a job: its options are a dataclass of :mod:`jobs.options`, and it runs
``main(config, options)`` of its job module, the same function ``python -m jobs.NAME``
runs under ``ray job submit``. Job modules are imported only when their command runs, so
``eyenet --help`` does not pay for torch and Ray. Every :class:`EyeNetError` becomes one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from eyenet import __version__
from eyenet.config import EyeNetConfig
from jobs.options import (
    ChaosBenchOptions,
    DemoOptions,
    DeployOptions,
    DetectOptions,
    EvaluateOptions,
    FleetBenchOptions,
    IngestOptions,
    ModelsOptions,
    Options,
    PipelineBenchOptions,
    PredictOptions,
    ReportOptions,
    ServeBenchOptions,
    ServeOptions,
    SourcesBenchOptions,
    StoreBenchOptions,
    TrainBenchOptions,
    TrainOptions,
    add_config_arguments,
    run_parsed,
)


@dataclass(kw_only=True)
class ConfigOptions(Options):
    """``eyenet config`` has no options of its own."""


def _config(config: EyeNetConfig, options: ConfigOptions) -> int:
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def _job(module: str) -> Any:
    """The ``main`` of job module ``module``, imported when its command runs (not for --help)."""
    def run(config: EyeNetConfig, options: Options) -> int:
        return int(importlib.import_module(module).main(config, options))
    run.module = module  # type: ignore[attr-defined]
    return run


# (command, help, options, job): the job runs as ``main(config, options)``
COMMANDS = (
    ("config", "print the effective, validated config", ConfigOptions, _config),
    ("models", "list, show, promote or roll back models", ModelsOptions, _job("jobs.models")),
    ("detect", "offline: train on one CSV, score another, write OUT.csv",
     DetectOptions, _job("jobs.detect")),
    ("train", "train (optionally tune) on Ray and register the model as staging",
     TrainOptions, _job("jobs.train")),
    ("evaluate", "score the detector and baselines on labelled datasets",
     EvaluateOptions, _job("jobs.evaluate")),
    ("ingest", "run the live pipeline: collectors, scoring, monitor", IngestOptions, _job("jobs.ingest")),
    ("serve", "deploy the HTTP API on Ray Serve", ServeOptions, _job("jobs.serve")),
    ("deploy", "deploy the HTTP API onto the cluster and leave it running (what jobs.deploy does)",
     DeployOptions, _job("jobs.deploy")),
    ("predict", "ask the running API about devices' live windows", PredictOptions, _job("jobs.predict")),
    ("demo", "end to end on a local Ray: ingest, train, promote, serve, live incidents, report",
     DemoOptions, _job("jobs.demo")),
    ("report", "latency, drift, alerts and anomalies per device over a time range",
     ReportOptions, _job("jobs.report")),
)
BENCHES = (
    ("store", "batched writes and last-window reads of a store",
     StoreBenchOptions, _job("jobs.bench_store")),
    ("train", "Ray Train against a bare torch loop (--from-store: driver memory of store training)",
     TrainBenchOptions, _job("jobs.bench_train")),
    ("pipeline", "the live pipeline: sample-to-score latency, memory",
     PipelineBenchOptions, _job("jobs.bench_pipeline")),
    ("serve", "HTTP requests/s against a no-op deployment", ServeBenchOptions, _job("jobs.bench_serve")),
    ("chaos", "the pipeline and the API under load while components are killed: what was lost",
     ChaosBenchOptions, _job("jobs.bench_chaos")),
    ("fleet", "false positives and recall on devices the model never saw",
     FleetBenchOptions, _job("jobs.bench_fleet")),
    ("sources", "SNMP agent polls per second one collector sustains (starts its own snmpd agents)",
     SourcesBenchOptions, _job("jobs.bench_sources")),
)


def _add_command(sub: Any, name: str, text: str, options_cls: type[Options], job: Any) -> None:
    p = sub.add_parser(name, help=text, description=text)
    add_config_arguments(p)
    options_cls.add_arguments(p)
    p.set_defaults(options_cls=options_cls, job=job)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyenet", description="Anomaly detection for network-device telemetry.")
    parser.add_argument("--version", action="version", version=f"eyenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _add_command(sub, *command)
    bench = sub.add_parser("bench", help="benchmarks; prints figures (and ratios)").add_subparsers(
        dest="what", required=True, metavar="WHAT")
    for command in BENCHES:
        _add_command(bench, *command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_parsed(args, args.options_cls, args.job)


if __name__ == "__main__":
    raise SystemExit(main())
