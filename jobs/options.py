"""Typed options of every job, and the command-line parsers built from them.

Each job takes ``(config, options)``: the validated :class:`EyeNetConfig` and one of the
dataclasses below. The ``eyenet`` command (:mod:`jobs.cli`) and each job's own
``python -m jobs.NAME`` (what ``ray job submit`` runs) build their parsers from the same
fields, so a flag, its default and its help exist once; jobs that call each other (the
demo runs ingest and train) build the dataclasses directly instead of faking an argv.

A field's metadata holds its flag and help; invalid values raise :class:`ConfigError`
naming the flag, whichever way the options were made. This module imports no job, so
every job can import it without a circle.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from eyenet.config import DEFAULT_MODEL_NAME, EyeNetConfig, load_config
from eyenet.detection.evaluation import EVALUATED_MODELS
from eyenet.errors import ConfigError, EyeNetError

EXIT_ERROR, EXIT_USAGE = 1, 2
DATASETS = ("smd", "nab")
INGEST_SOURCES = ("simulated", "replay", "devices")


def opt(default: Any, help: str, *, flag: str | None = None, positional: bool = False,
        **argparse_kw: Any) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes``)."""
    meta = {"help": help, "flag": flag, "positional": positional, "argparse": argparse_kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class Options:
    """Base of every job's options: builds its parser and is built from parsed arguments."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            meta = f.metadata
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            kw: dict[str, Any] = {"help": meta["help"], **meta["argparse"]}
            if meta["positional"]:
                parser.add_argument(f.name, default=default, **kw)
                continue
            if default is False:
                kw.setdefault("action", "store_true")
            elif "type" not in kw and "action" not in kw and default is not None \
                    and not isinstance(default, (list, tuple)):
                kw["type"] = type(default)
            parser.add_argument(meta["flag"] or _flag(f.name), dest=f.name, default=default, **kw)

    @classmethod
    def from_namespace(cls: type[OptionsT], args: argparse.Namespace) -> OptionsT:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


OptionsT = TypeVar("OptionsT", bound=Options)


def _field(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _at_least(flag: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{flag} must be >= {low:g}, got {value}", _field(flag), value)


def _positive(flag: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{flag} must be > 0, got {value}", _field(flag), value)


@dataclass(kw_only=True)
class TrainingResources(Options):
    """How much of the cluster a training run takes."""

    workers: int = opt(1, "Ray Train workers (DDP)")
    gpus: float = opt(0.0, "GPUs in total across workers")
    max_epochs: int | None = opt(None, "cap on epochs (default: the config's)", type=int)

    def __post_init__(self) -> None:
        _at_least("--workers", self.workers, 1)
        _at_least("--gpus", self.gpus, 0)
        if self.max_epochs is not None:
            _at_least("--max-epochs", self.max_epochs, 1)

    @property
    def train_kw(self) -> dict[str, Any]:
        return {"workers": self.workers, "gpus": self.gpus, "max_epochs": self.max_epochs}


@dataclass(kw_only=True)
class ModelsOptions(Options):
    action: str = opt("list", "what to do with the registry", positional=True,
                      choices=["list", "show", "promote", "rollback"])
    version: int | None = opt(None, "version number (show, promote)", positional=True, nargs="?", type=int)
    name: str = opt(DEFAULT_MODEL_NAME, "model name (default: %(default)s)")
    json: bool = opt(False, "machine-readable output (list)")
    skip_gate: bool = opt(False, "promote: check artifact integrity only, not the replay gate on "
                                 "recent telemetry")

    def __post_init__(self) -> None:
        if self.action in ("show", "promote") and self.version is None:
            raise ConfigError(f"'eyenet models {self.action}' needs a VERSION number", "version")


@dataclass(kw_only=True)
class DetectOptions(TrainingResources):
    train: str = opt(None, "timestamp + metric columns", metavar="CSV", required=True)
    test: str = opt(None, "same metric columns", metavar="CSV", required=True)
    out: str = opt(None, "written: timestamp,score,is_anomaly,top_feature,regime_change", metavar="CSV",
                   required=True)


@dataclass(kw_only=True)
class TrainOptions(TrainingResources):
    train_csv: str | None = opt(None, "train on a metric CSV", metavar="CSV")
    from_store: bool = opt(False, "train on the store's history")
    device: list[str] | None = opt(None, "(--from-store) only these devices; repeatable", action="append")
    since: str | None = opt(None, "(--from-store) start of history (ISO time)")
    until: str | None = opt(None, "(--from-store) end of history (ISO time)")
    tune: bool = opt(False, "search hyperparameters with Ray Tune (ASHA)")
    trials: int = opt(8, "(--tune) number of trials")
    time_budget_s: float = opt(600.0, "(--tune) wall-clock budget")
    name: str = opt(DEFAULT_MODEL_NAME, "model name in the registry")

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.train_csv) == self.from_store:
            raise ConfigError("give one of --train-csv CSV or --from-store (where the history comes from)",
                              "train_csv")
        _at_least("--trials", self.trials, 1)
        _positive("--time-budget-s", self.time_budget_s)


@dataclass(kw_only=True)
class EvaluateOptions(TrainingResources):
    data: str = opt("../shared/datasets", "datasets root (default: %(default)s)")
    datasets: list[str] = opt(list(DATASETS), "which labelled sets", nargs="+", choices=list(DATASETS))
    series: list[str] | None = opt(None, "only these series (machine or file names)", nargs="+")
    models: list[str] = opt(list(EVALUATED_MODELS), "detector kinds and baselines to score (default: all)",
                            nargs="+", choices=list(EVALUATED_MODELS))
    out: str | None = opt(None, "also write the full result here", metavar="JSON")
    json: bool = opt(False, "print one JSON object")


@dataclass(kw_only=True)
class IngestOptions(Options):
    source: str = opt("simulated", "where telemetry comes from", choices=list(INGEST_SOURCES), required=True)
    devices: int = opt(10, "simulated: fleet size")
    seed: int = opt(0, "simulated: fleet and noise seed")
    speed: float = opt(1.0, "clock speed factor (simulated: accelerated clock; replay: file time per second)")
    files: list[str] | None = opt(None, "replay: CSV or Parquet files", nargs="+", metavar="PATH")
    history_s: float = opt(0.0, "first generate/read this many seconds of history, as fast as possible")
    seconds: float | None = opt(None, "stop after this long (default: until Ctrl-C)", type=float)
    until_caught_up: bool = opt(False, "stop once the history is in (for building a training set)")
    incident: list[str] | None = opt(
        None, "simulated: inject an incident (ddos_burst, link_down, latency_spike, slow_exfiltration, "
              "counter_reset, sensor_stuck); repeatable",
        action="append", metavar="KIND:DEVICE:START_S:DURATION_S")
    incident_rate: float = opt(0.0, "simulated: random incidents per device per day")
    garbage_rate: float = opt(0.0, "simulated: share of samples given a defect (NaN, text, negative, future)")
    no_score: bool = opt(False, "collect only")
    json: bool = opt(False, "print the summary as one JSON object")

    def __post_init__(self) -> None:
        _positive("--seconds", self.seconds)
        if self.source == "replay" and not self.files:
            raise ConfigError("--source replay needs --files PATH [PATH ...]", "files")


@dataclass(kw_only=True)
class ServeOptions(Options):
    host: str | None = opt(None, "bind address (default: the config's serve.host)")
    port: int | None = opt(None, "port (default: the config's serve.port)", type=int)
    detach: bool = opt(False, "leave the application running and exit")
    insecure: bool = opt(False, "serve beyond loopback without $EYENET_API_KEY (anyone reaching it reads "
                                "every score)")


@dataclass(kw_only=True)
class DeployOptions(Options):
    host: str | None = opt(None, "bind address of Serve's HTTP proxy (default: the config's serve.host)")
    port: int | None = opt(None, "port (default: the config's serve.port)", type=int)
    insecure: bool = opt(False, "serve beyond loopback without $EYENET_API_KEY (anyone reaching it reads "
                                "every score)")


@dataclass(kw_only=True)
class PredictOptions(Options):
    devices: list[str] = opt([], "devices to ask about", positional=True, nargs="+", metavar="DEVICE")
    url: str | None = opt(None, "the running API (default: http://serve.host:serve.port of the config); "
                                "the key, if the API needs one, comes from $EYENET_API_KEY")
    timeout_s: float = opt(30.0, "how long to wait for each answer")
    json: bool = opt(False, "print the answers as one JSON list")

    def __post_init__(self) -> None:
        _positive("--timeout-s", self.timeout_s)
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https://, got {self.url!r}", "url", self.url)


@dataclass(kw_only=True)
class DemoOptions(Options):
    dir: str = opt("eyenet-demo", "where the demo's store, models and plots go (recreated)")
    devices: int = opt(20, "simulated devices (at least 5: one per incident and a quiet one)")
    history_s: float = opt(1800.0, "history to train on")
    seconds: float = opt(90.0, "live phase (at least 75)")
    train_time_s: float = opt(160.0, "the Ray Tune search's wall-clock budget (trials run one "
                                     "after another, each training for part of its share)")
    trials: int = opt(2, "Ray Tune trials (hyperparameter draws; the best is registered)")
    port: int | None = opt(None, "HTTP port (default: the config's serve.port)", type=int)
    json: bool = opt(False, "print the end summary as one JSON object (progress goes to stderr)")
    plain: bool = opt(False, "plain lines instead of the live table (also when stdout is not a terminal)")
    verbose: bool = opt(False, "show Ray's, Serve's and the workers' own log lines")
    keep_serving: bool = opt(False, "leave the API up at the end, until Ctrl-C")

    def __post_init__(self) -> None:
        _positive("--history-s", self.history_s)
        _positive("--train-time-s", self.train_time_s)
        _at_least("--trials", self.trials, 1)


@dataclass(kw_only=True)
class ReportOptions(Options):
    since: str = opt("1h", "duration back from now (30m, 1h, 2d) or ISO time")
    until: str | None = opt(None, "end of the range (default: now)")
    address: str | None = opt(None, "Ray cluster whose monitor to ask (default: $RAY_ADDRESS)")
    save: bool = opt(False, "also save the report in the store (reading alone writes nothing)")
    json: bool = opt(False, "print one JSON object")


@dataclass(kw_only=True)
class StoreBenchOptions(Options):
    uri: str | None = opt(None, "store to measure (default: a fresh SQLite file)")
    devices: int = opt(1000, "devices written")
    samples: int = opt(1_000_000, "samples written in all")
    batch_size: int = opt(1000, "samples per write")
    reads: int = opt(200, "last-window reads measured")
    json: bool = opt(False, "print one JSON object")

    def __post_init__(self) -> None:
        for flag in ("devices", "samples", "batch_size", "reads"):
            _at_least(_flag(flag), getattr(self, flag), 1)


@dataclass(kw_only=True)
class TrainBenchOptions(Options):
    rows: int = opt(20_000, "rows of synthetic history")
    metrics: int = opt(38, "metrics per row")
    epochs: int = opt(3, "epochs of each loop")
    workers: int = opt(1, "Ray Train workers")
    gpus: float = opt(0.0, "GPUs in total across workers")
    batch_size: int = opt(32, "windows per training batch")
    from_store: bool = opt(False, "instead: the driver's peak RSS preparing train --from-store "
                                  "(device by device, beside the whole-frame path) at --store-samples")
    store_samples: list[int] = opt([1_000_000, 5_000_000], "(--from-store) store sizes in samples",
                                   nargs="+", type=int)
    samples_per_device: int = opt(10_000, "(--from-store) history per device; sizes differ in devices")
    json: bool = opt(False, "print one JSON object")

    def __post_init__(self) -> None:
        for flag in ("rows", "metrics", "epochs", "workers", "batch_size", "samples_per_device"):
            _at_least(_flag(flag), getattr(self, flag), 1)
        _at_least("--gpus", self.gpus, 0)
        for n in self.store_samples:
            _at_least("--store-samples", n, self.samples_per_device)


@dataclass(kw_only=True)
class PipelineBenchOptions(Options):
    devices: int = opt(1000, "simulated devices")
    seconds: float = opt(60.0, "how long to run live")
    devices_per_actor: int | None = opt(None, "devices per collector actor", type=int)
    feature_actors: int | None = opt(None, "scoring actors", type=int)
    json: bool = opt(False, "print one JSON object")


@dataclass(kw_only=True)
class ChaosBenchOptions(Options):
    minutes: float = opt(10.0, "how long the soak runs")
    devices: int = opt(1000, "simulated devices")
    clients: int = opt(8, "keep-alive HTTP clients calling /v1/predict and /v1/score")
    requests_per_s: float = opt(20.0, "the clients' requests per second, together")
    fault_every_s: float = opt(30.0, "seconds between faults (each kind in turn, seeded order)")
    store_outage_s: float = opt(10.0, "how long the store is held locked by another process")
    seed: int = opt(0, "the fault schedule's seed")
    faults: int | None = opt(None, "make exactly this many faults (default: one every --fault-every-s "
                                   "while --minutes last)", type=int)
    json: bool = opt(False, "print one JSON object")

    def __post_init__(self) -> None:
        _positive("--minutes", self.minutes)
        _positive("--faults", self.faults)
        _at_least("--devices", self.devices, 1)
        _at_least("--clients", self.clients, 1)
        _positive("--requests-per-s", self.requests_per_s)
        _positive("--fault-every-s", self.fault_every_s)
        _positive("--store-outage-s", self.store_outage_s)
        if self.store_outage_s >= self.fault_every_s:
            raise ConfigError(f"--store-outage-s ({self.store_outage_s:g}) must be shorter than "
                              f"--fault-every-s ({self.fault_every_s:g})", "store_outage_s",
                              self.store_outage_s)
        if self.minutes * 60 < 2 * self.fault_every_s:
            raise ConfigError(f"--minutes {self.minutes:g} leaves room for no fault every "
                              f"{self.fault_every_s:g} s: run at least "
                              f"{2 * self.fault_every_s / 60:g} minutes", "minutes", self.minutes)


@dataclass(kw_only=True)
class ServeBenchOptions(Options):
    clients: int = opt(16, "concurrent HTTP clients")
    seconds: float = opt(15.0, "per target")
    json: bool = opt(False, "print one JSON object")


@dataclass(kw_only=True)
class FleetBenchOptions(Options):
    devices: int = opt(1000, "simulated devices")
    train_devices: int = opt(40, "devices the model trains on")
    incident_devices: int = opt(100, "unseen devices given one incident each")
    json: bool = opt(False, "print one JSON object")


@dataclass(kw_only=True)
class SourcesBenchOptions(Options):
    agents: int = opt(8, "snmpd agents started on loopback ports")
    devices: int = opt(2000, "devices polled, spread over the agents")
    rounds: int = opt(5, "poll rounds measured (after a first one)")
    interface: str | None = opt(None, "each device is this one interface (default: the agent, summed)")
    json: bool = opt(False, "print one JSON object")

    def __post_init__(self) -> None:
        counts = (("--agents", self.agents), ("--devices", self.devices), ("--rounds", self.rounds))
        for flag, value in counts:
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}", flag.lstrip("-"), value)


# -- running a job from a command line -----------------------------------------------------------

def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: $EYENET_CONFIG)")
    parser.add_argument("--store", metavar="URI", help="store URI, overrides the config's store_uri")
    parser.add_argument("--artifact-root", metavar="PATH", help="overrides the config's artifact_root")


def config_from(args: argparse.Namespace) -> EyeNetConfig:
    """The config ``--config`` (or ``$EYENET_CONFIG``) names, with ``--store``/``--artifact-root``."""
    config = load_config(args.config)
    overrides = {k: v for k, v in (("store_uri", args.store), ("artifact_root", args.artifact_root))
                 if v is not None}
    if overrides:
        config = EyeNetConfig.from_dict({**config.to_dict(), **overrides},
                                        {k: f"--{k.replace('_', '-')}" for k in overrides})
    return config


JobMain = Callable[[EyeNetConfig, Any], int]


def run_parsed(args: argparse.Namespace, options_cls: type[Options], job: JobMain) -> int:
    """Run ``job(config, options)``; an :class:`EyeNetError` is one line on stderr and an exit code."""
    try:
        return int(job(config_from(args), options_cls.from_namespace(args)))
    except ConfigError as exc:
        print(f"eyenet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EyeNetError as exc:
        print(f"eyenet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def job_main(options_cls: type[Options], job: JobMain, argv: Sequence[str] | None = None, *,
             prog: str, description: str) -> int:
    """``python -m jobs.NAME [options]``: the job's own parser, the same flags as ``eyenet NAME``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser)
    options_cls.add_arguments(parser)
    return run_parsed(parser.parse_args(argv), options_cls, job)


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """A bench's result: one JSON object, or one aligned line per figure."""
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>34}: {value}")
