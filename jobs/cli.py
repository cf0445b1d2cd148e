"""The ``eyenet`` command: the front door to everything a user runs.

Each sub-command parses its own options and calls into the core; Ray-dependent commands
import their job module only when invoked, so ``eyenet --help`` stays fast. Every
:class:`EyeNetError` becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from eyenet import __version__
from eyenet.config import EyeNetConfig, load_config
from eyenet.detection.evaluation import EVALUATED_MODELS
from eyenet.errors import ConfigError, EyeNetError

EXIT_ERROR, EXIT_USAGE = 1, 2


def _load(args: argparse.Namespace) -> EyeNetConfig:
    config = load_config(args.config)
    overrides = {k: v for k, v in (("store_uri", args.store), ("artifact_root", args.artifact_root))
                 if v is not None}
    if overrides:
        config = EyeNetConfig.from_dict({**config.to_dict(), **overrides},
                                        {k: f"--{k.replace('_', '-')}" for k in overrides})
    return config


def _registry(config: EyeNetConfig) -> Any:
    from eyenet.models.registry import ModelRegistry
    from eyenet.store import open_store

    return ModelRegistry(open_store(config.store_uri), config.artifact_root)


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    registry = _registry(_load(args))
    if args.action == "list":
        versions = registry.list(args.name)
        if args.json:
            print(json.dumps([v.to_dict() for v in versions], indent=1))
        elif not versions:
            print(f"no versions of {args.name} registered")
        for v in versions if not args.json else []:
            print(f"{v.name}  v{v.version:<4} {v.state:<10} {v.created_at}  "
                  f"{json.dumps(v.metrics, sort_keys=True)}")
        return 0
    if args.action == "show":
        print(json.dumps(registry.get(args.name, _version(args)).to_dict(), indent=1))
        return 0
    if args.action == "promote":
        from eyenet.models.gates import promotion_gates

        gates = [] if args.skip_gate else promotion_gates(_load(args), registry)
        mv = registry.promote(args.name, _version(args), gates=gates)
        print(f"{mv.name} v{mv.version} is now {mv.state}"
              + (f"; gate: {json.dumps(mv.gate_report, sort_keys=True)}" if mv.gate_report else ""))
        return 0
    mv = registry.rollback(args.name)
    print(f"rolled back: {mv.name} v{mv.version} is now {mv.state}")
    return 0


def _version(args: argparse.Namespace) -> int:
    if args.version is None:
        raise ConfigError(f"'eyenet models {args.action}' needs a VERSION number", "version")
    return args.version


def _train_kw(args: argparse.Namespace) -> dict[str, Any]:
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}", "workers", args.workers)
    if args.gpus < 0:
        raise ConfigError(f"--gpus must be >= 0, got {args.gpus}", "gpus", args.gpus)
    return {"workers": args.workers, "gpus": args.gpus, "max_epochs": getattr(args, "max_epochs", None)}


def cmd_detect(args: argparse.Namespace) -> int:
    from jobs.detect import run_detect

    summary = run_detect(args.train, args.test, args.out, _load(args), **_train_kw(args))
    print(f"wrote {summary['rows']} rows ({summary['anomalies']} anomalous, {summary['regime_changes']} "
          f"regime changes) to {summary['out']} in {summary['seconds']:.0f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from jobs.train_cli import run_train

    mv = run_train(args, _load(args), **_train_kw(args))
    print(f"registered {mv.name} v{mv.version} ({mv.state}): {json.dumps(mv.metrics, sort_keys=True)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from jobs.evaluate import run_evaluation

    result = run_evaluation(args.data, _load(args), datasets=tuple(args.datasets),
                            series=args.series, models=tuple(args.models), **_train_kw(args))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    if args.json:
        print(json.dumps(result))
    else:
        for key, table in result["mean"].items():
            print(f"mean {key:30} " + " ".join(
                f"{k}={table[k]:.3f}" for k in ("auprc", "vus_pr", "f1", "precision", "recall",
                                                "event_recall", "oracle_best_f1", "point_adjusted_f1",
                                                "attribution_hit_rate") if k in table))
    for failure in result["errors"]:
        print(f"eyenet: error: {failure['dataset']}/{failure['series']}: {failure['error']}", file=sys.stderr)
    return EXIT_ERROR if result["errors"] else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from jobs.ingest import run_ingest

    summary = run_ingest(_load(args), args)
    if args.json:
        print(json.dumps(summary))
    else:
        totals = summary["totals"]
        print(f"{summary['devices']} devices, {summary['seconds']} s: fetched {totals.get('fetched', 0):,}, "
              f"stored {totals.get('stored', 0):,}, rejected {totals.get('rejected', 0):,}, "
              f"scored {summary['scored']:,}, anomalies {summary['anomalies']:,}")
        for reason, n in sorted(summary["reasons"].items()):
            print(f"  {reason}: {n:,}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from jobs.serve import run_serve

    config = _load(args)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        serve_section = {**config.serve.model_dump(), **overrides}
        config = EyeNetConfig.from_dict({**config.to_dict(), "serve": serve_section},
                                        {f"serve.{k}": f"--{k}" for k in overrides})
    run_serve(config, detach=args.detach)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo import run_demo

    result = run_demo(_load(args), directory=args.dir, devices=args.devices, history_s=args.history_s,
                      seconds=args.seconds, port=args.port, train_time_s=args.train_time_s)
    return 0 if result["incident_devices_found"] else EXIT_ERROR


def cmd_report(args: argparse.Namespace) -> int:
    from jobs.report import run_report

    report = run_report(_load(args), args.since, args.until, args.address)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print(yaml.safe_dump(json.loads(json.dumps(report, default=str)), sort_keys=False), end="")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "serve":
        from jobs.bench_serve import run_serve_bench

        result = run_serve_bench(clients=args.clients, seconds=args.seconds if args.seconds != 60.0 else 15.0)
    elif args.what == "pipeline":
        from jobs.bench_pipeline import run_pipeline_bench

        result = run_pipeline_bench(_load(args), devices=args.devices, seconds=args.seconds,
                                    devices_per_actor=args.devices_per_actor,
                                    feature_actors=args.feature_actors)
    elif args.what == "fleet":
        from jobs.bench_fleet import run_fleet_bench

        result = run_fleet_bench(_load(args), devices=args.devices, train_devices=args.train_devices,
                                 incident_devices=args.incident_devices)
    elif args.what == "train":
        from jobs.bench_train import run_train_bench

        _train_kw(args)  # checks --workers and --gpus
        result = run_train_bench(rows=args.rows, metrics=args.metrics, epochs=args.epochs,
                                 workers=args.workers, gpus=args.gpus, batch_size=args.batch_size or 32)
    else:
        from eyenet.store.bench import run_store_bench

        result = run_store_bench(uri=args.uri, devices=args.devices, samples=args.samples,
                                 batch_size=args.batch_size or 1000, reads=args.reads)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>34}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyenet", description="Anomaly detection for network-device telemetry.")
    parser.add_argument("--version", action="version", version=f"eyenet {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML config (default: $EYENET_CONFIG)")
    common.add_argument("--store", metavar="URI", help="store URI, overrides the config's store_uri")
    common.add_argument("--artifact-root", metavar="PATH", help="overrides the config's artifact_root")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", parents=[common], help="print the effective, validated config")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("models", parents=[common], help="list, show, promote or roll back models")
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("version", nargs="?", type=int, help="version number (show, promote)")
    p.add_argument("--name", default="eyenet-detector", help="model name (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.add_argument("--skip-gate", action="store_true",
                   help="promote: check artifact integrity only, not the replay gate on recent telemetry")
    p.set_defaults(func=cmd_models)

    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    training.add_argument("--gpus", type=float, default=0, help="GPUs in total across workers")
    training.add_argument("--max-epochs", type=int, help="cap on epochs (default: the config's)")

    p = sub.add_parser("detect", parents=[common, training],
                       help="offline: train on one CSV, score another, write OUT.csv")
    p.add_argument("--train", required=True, metavar="CSV", help="timestamp + metric columns")
    p.add_argument("--test", required=True, metavar="CSV", help="same metric columns")
    p.add_argument("--out", required=True, metavar="CSV",
                   help="written: timestamp,score,is_anomaly,top_feature,regime_change")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("train", parents=[common, training],
                       help="train (optionally tune) on Ray and register the model as staging")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-csv", metavar="CSV", help="train on a metric CSV")
    src.add_argument("--from-store", action="store_true", help="train on the store's history")
    p.add_argument("--device", action="append", help="(--from-store) only these devices; repeatable")
    p.add_argument("--since", help="(--from-store) start of history (ISO time)")
    p.add_argument("--until", help="(--from-store) end of history (ISO time)")
    p.add_argument("--tune", action="store_true", help="search hyperparameters with Ray Tune (ASHA)")
    p.add_argument("--trials", type=int, default=8, help="(--tune) number of trials")
    p.add_argument("--time-budget-s", type=float, default=600.0, help="(--tune) wall-clock budget")
    p.add_argument("--name", default="eyenet-detector", help="model name in the registry")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common, training],
                       help="score the detector and baselines on labelled datasets")
    p.add_argument("--data", default="../shared/datasets", help="datasets root (default: %(default)s)")
    p.add_argument("--datasets", nargs="+", choices=["smd", "nab"], default=["smd", "nab"])
    p.add_argument("--series", nargs="+", help="only these series (machine or file names)")
    p.add_argument("--models", nargs="+", choices=list(EVALUATED_MODELS), default=list(EVALUATED_MODELS),
                   help="detector kinds and baselines to score (default: all)")
    p.add_argument("--out", metavar="JSON", help="also write the full result here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ingest", parents=[common],
                       help="run the live pipeline: collectors, scoring, monitor")
    p.add_argument("--source", choices=["simulated", "replay"], required=True)
    p.add_argument("--devices", type=int, default=10, help="simulated: fleet size")
    p.add_argument("--seed", type=int, default=0, help="simulated: fleet and noise seed")
    p.add_argument("--speed", type=float, default=1.0,
                   help="clock speed factor (simulated: accelerated clock; replay: file time per second)")
    p.add_argument("--files", nargs="+", metavar="PATH", help="replay: CSV or Parquet files")
    p.add_argument("--history-s", type=float, default=0.0,
                   help="first generate/read this many seconds of history, as fast as possible")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--until-caught-up", action="store_true",
                   help="stop once the history is in (for building a training set)")
    p.add_argument("--incident", action="append", metavar="KIND:DEVICE:START_S:DURATION_S",
                   help="simulated: inject an incident (ddos_burst, link_down, latency_spike, "
                        "slow_exfiltration, counter_reset, sensor_stuck); repeatable")
    p.add_argument("--incident-rate", type=float, default=0.0,
                   help="simulated: random incidents per device per day")
    p.add_argument("--garbage-rate", type=float, default=0.0,
                   help="simulated: share of samples given a defect (NaN, text, negative, future)")
    p.add_argument("--no-score", action="store_true", help="collect only")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("serve", parents=[common], help="deploy the HTTP API on Ray Serve")
    p.add_argument("--host", help="bind address (default: the config's serve.host)")
    p.add_argument("--port", type=int, help="port (default: the config's serve.port)")
    p.add_argument("--detach", action="store_true", help="leave the application running and exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", parents=[common],
                       help="end to end on a local Ray: ingest, train, promote, serve, live "
                            "incidents, report")
    p.add_argument("--dir", default="eyenet-demo", help="where the demo's store and models go (recreated)")
    p.add_argument("--devices", type=int, default=10, help="simulated devices (at least 9)")
    p.add_argument("--history-s", type=float, default=3600.0, help="history to train on")
    p.add_argument("--seconds", type=float, default=90.0, help="live phase (at least 75)")
    p.add_argument("--train-time-s", type=float, default=60.0, help="training time budget")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's serve.port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", parents=[common],
                       help="latency, drift, alerts and anomalies per device over a time range")
    p.add_argument("--since", default="1h", help="duration back from now (30m, 1h, 2d) or ISO time")
    p.add_argument("--until", help="end of the range (default: now)")
    p.add_argument("--address", help="Ray cluster whose monitor to ask (default: $RAY_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", parents=[common], help="benchmarks; prints figures (and ratios)")
    p.add_argument("what", choices=["store", "train", "pipeline", "serve", "fleet"], help="what to measure")
    p.add_argument("--clients", type=int, default=16, help="serve: concurrent HTTP clients")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="pipeline: how long to run live; serve: per target (default 15)")
    p.add_argument("--devices-per-actor", type=int, help="pipeline: devices per collector actor")
    p.add_argument("--feature-actors", type=int, help="pipeline: scoring actors")
    p.add_argument("--workers", type=int, default=1, help="train: Ray Train workers")
    p.add_argument("--gpus", type=float, default=0, help="train: GPUs in total across workers")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--uri", help="store to measure (default: a fresh SQLite file)")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, help="store: samples per write (1000); train: 32")
    p.add_argument("--reads", type=int, default=200)
    p.add_argument("--rows", type=int, default=20_000, help="train: rows of synthetic history")
    p.add_argument("--metrics", type=int, default=38, help="train: metrics per row")
    p.add_argument("--epochs", type=int, default=3, help="train: epochs of each loop")
    p.add_argument("--train-devices", type=int, default=40, help="fleet: devices the model trains on")
    p.add_argument("--incident-devices", type=int, default=100,
                   help="fleet: unseen devices given one incident each")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"eyenet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EyeNetError as exc:
        print(f"eyenet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
