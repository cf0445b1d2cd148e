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
    from eyenet.registry import ModelRegistry
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
        mv = registry.promote(args.name, _version(args))
        print(f"{mv.name} v{mv.version} is now {mv.state}")
        return 0
    mv = registry.rollback(args.name)
    print(f"rolled back: {mv.name} v{mv.version} is now {mv.state}")
    return 0


def _version(args: argparse.Namespace) -> int:
    if args.version is None:
        raise ConfigError(f"'eyenet models {args.action}' needs a VERSION number", "version")
    return args.version


def cmd_bench(args: argparse.Namespace) -> int:
    from eyenet.bench_store import run_store_bench

    result = run_store_bench(uri=args.uri, devices=args.devices, samples=args.samples,
                             batch_size=args.batch_size, reads=args.reads)
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
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("bench", parents=[common], help="benchmarks; prints figures (and ratios)")
    p.add_argument("what", choices=["store"], help="what to measure")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--uri", help="store to measure (default: a fresh SQLite file)")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--reads", type=int, default=200)
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
