"""EyeNet configuration: one validated model, loaded from YAML with ``EYENET_*`` overrides.

Precedence, lowest first: built-in defaults, the YAML file (``--config FILE`` or
``EYENET_CONFIG``), then environment variables. A nested field is addressed with a double
underscore: ``EYENET_ALERTS__LATENCY_AVG_MS=150``. Lists take JSON or comma-separated
text (``EYENET_METRICS=bytes_in,latency``), mappings take JSON.

Unknown keys are errors rather than ignored: a typo such as ``windw_s`` would otherwise
silently leave the default in force. Every failure is a :class:`ConfigError` naming the
field, the value, where it came from and what was expected.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from eyenet.errors import ConfigError
from eyenet.sources.specs import DeviceSpec, check_devices

DEFAULT_MODEL_NAME = "eyenet-detector"  # the registry name every job and actor uses unless told
DEFAULT_METRICS = ["bytes_in", "bytes_out", "packets_in", "packets_out", "latency"]
DEFAULT_COUNTER_METRICS = ["bytes_in", "bytes_out", "packets_in", "packets_out"]
# Built-in plausibility bounds for the default metrics (rates for counters): 1 Tbit/s in
# bytes, 1 Tbit/s of 64-byte frames in packets, one hour of latency in ms. They apply only
# to metrics that are configured; ``metric_max`` overrides them.
DEFAULT_METRIC_MAX = {"bytes_in": 1.25e11, "bytes_out": 1.25e11, "packets_in": 2e9,
                      "packets_out": 2e9, "latency": 3.6e6}
ENV_PREFIX = "EYENET_"
# Environment variables with the prefix that are not config fields.
RESERVED_ENV = {"EYENET_CONFIG", "EYENET_API_KEY", "EYENET_ADMIN_KEY"}
# EYENET_TEST_* name what the test suite runs against (a MongoDB, the components .ci/run starts)
RESERVED_ENV_PREFIX = "EYENET_TEST_"
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Names the telemetry schema and the stores use for their own columns.
RESERVED_METRIC_NAMES = {"device_id", "timestamp", "label", "ts_ms", "_id"}
# Mapping-valued settings: read as JSON from the environment, leaves for source tracking.
DICT_FIELDS = ("metric_max", "device_thresholds")
# List-valued settings: JSON or comma-separated text from the environment.
LIST_FIELDS = ("metrics", "counter_metrics", "log_metrics", "ensemble_members")
OPTIONAL_FIELDS = ("max_gap_s", "webhook_url", "smoothing_steps", "rolling_s", "max_train_time_s",
                   "buffer_samples", "adapt_after_s", "log_metrics", "false_alarms_per_day",
                   "forecast_from_window_mean")
STORE_SCHEMES = ("sqlite:///", "mongodb://", "mongodb+srv://")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class AlertConfig(_Section):
    """Alert rules (the seed's thresholds are the defaults)."""

    latency_avg_ms: float = Field(100.0, gt=0, description="alert when mean prediction latency exceeds this")
    drift_threshold: float = Field(0.3, gt=0, description="alert when a metric's drift score exceeds this")
    cooldown_s: float = Field(300.0, ge=0, description="minimum time between repeats of one alert")
    webhook_url: str | None = Field(None, description="Alertmanager-compatible webhook, if any")
    webhook_timeout_s: float = Field(5.0, gt=0, description="one webhook POST gives up after this")
    webhook_max_retries: int = Field(5, ge=0, description="retries of a failed webhook POST")
    webhook_backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles per retry")
    anomaly_min_points: int = Field(
        3, ge=1, description="anomalous points of one device within anomaly_window_s that open "
                             "a device anomaly alert")
    anomaly_window_s: float = Field(60.0, gt=0, description="window for anomaly_min_points")
    resolve_after_s: float = Field(
        60.0, gt=0, description="an alert resolves once its condition has been clear this long")


class MonitorConfig(_Section):
    """The monitor actor: latency and drift windows, how often rules run and state is saved."""

    drift_method: Literal["psi", "ks"] = Field(
        "psi", description="psi: population stability index over the reference's bins; ks: "
                           "largest CDF gap at the reference's bin edges")
    drift_window_s: float = Field(3600.0, gt=0, description="recent feature values compared "
                                                            "with the training reference")
    drift_bucket_s: float = Field(60.0, gt=0, description="granularity of the drift window")
    min_drift_samples: int = Field(500, ge=1, description="no drift score from fewer values")
    latency_window_s: float = Field(300.0, gt=0, description="sliding window of latency percentiles")
    check_interval_s: float = Field(5.0, gt=0, description="how often alert rules are evaluated")
    snapshot_interval_s: float = Field(
        60.0, gt=0, description="how often the monitor saves a snapshot (reports read them)")


class StreamingConfig(_Section):
    """Collector and feature actors of the live pipeline."""

    devices_per_actor: int = Field(
        100, ge=1, description="logical collectors per collector actor process (~100 MB each)")
    feature_actors: int = Field(2, ge=1, description="actors in the feature/scoring pool")
    buffer_samples: int | None = Field(
        None, ge=2, description="recent samples kept per device; default: collectors keep a "
                                "/v1/predict window (window_steps + 1 + smoothing), scorers "
                                "window_steps + 3")
    max_pending_samples: int = Field(
        50_000, ge=1, description="accepted samples a collector holds unwritten before it stops "
                                  "polling (backpressure on a slow store)")
    fetch_chunk_s: float = Field(
        3600.0, gt=0, description="longest time span fetched from a source in one call "
                                  "(catch-up and history generation)")
    retry_initial_s: float = Field(0.5, gt=0, description="first retry delay after a failure")
    retry_max_s: float = Field(30.0, gt=0, description="longest retry delay")


class ServeConfig(_Section):
    """Ray Serve options for the detector deployment."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="requests queued or in flight per detector replica that Serve's "
                               "autoscaler steers towards (a batch in the making counts)")
    upscale_delay_s: float = Field(
        30.0, ge=0, description="how long the load must call for more detector replicas before "
                                "Serve adds them (Serve's default)")
    downscale_delay_s: float = Field(
        600.0, ge=0, description="how long the load must call for fewer detector replicas before "
                                 "Serve removes them (Serve's default)")
    look_back_period_s: float = Field(
        30.0, gt=0, description="window over which Serve averages the ongoing requests it scales "
                                "on (Serve's default); handles report every 10 s, so a shorter "
                                "window reacts faster but Serve warns about it")
    replica_cpus: float = Field(
        0.5, ge=0, description="CPUs each detector replica reserves from Ray (0 schedules it "
                               "anywhere: a small test cluster, or scoring on a GPU)")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs each detector replica reserves (fractions share one GPU); "
                               "the replica scores on its GPU. With no GPU in the cluster the "
                               "deploy job warns and places replicas on CPUs")
    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, description="requests one ingress replica holds at once; Serve's default "
                               "of 5 would cap the detector's batches at 5 requests")


    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model_poll_s" in data:
            raise ValueError(f"serve.model_poll_s ({data['model_poll_s']!r}) was replaced by the top-level "
                             "registry_poll_interval_s, which the feature pool and the monitor follow too")
        return data

    @model_validator(mode="after")
    def _replicas_ordered(self) -> ServeConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


class PromotionConfig(_Section):
    """The label-free gate a staging model passes before production."""

    gate_window_s: float = Field(3600.0, gt=0, description="recent telemetry the candidate replays")
    gate_max_devices: int = Field(50, ge=1, description="devices replayed (the most recently active)")
    gate_max_alert_rate: float = Field(
        0.05, gt=0, le=1, description="the candidate fails when it flags more than this share of "
                                      "the replayed points")

class DetectorConfig(_Section):
    """The LSTM detector: network shape, training loop, scoring and threshold.

    Network and loop defaults are the seed's (hidden 64, 2 layers, Adam 1e-3, batch 32, up
    to 100 epochs, patience 10 on validation loss).
    """

    kind: Literal["lstm", "pca", "kmeans", "ensemble", "isolation_forest"] = Field(
        "lstm", description="what turns windows into errors: lstm (the seed's network, trained on "
                            "Ray Train), pca (subspace reconstruction of subsequences), kmeans "
                            "(distance to the nearest subsequence centroid), ensemble (the "
                            "ensemble_members' calibrated scores averaged), isolation_forest "
                            "(the evaluation baseline)")
    ensemble_members: list[Literal["lstm", "pca", "kmeans"]] = Field(
        default_factory=lambda: ["lstm", "kmeans"], min_length=1,
        description="kinds an ensemble combines, each fitted on the same data")
    subsequence_steps: int = Field(
        5, ge=1, le=200, description="rows of one subsequence for pca and kmeans (<= window_steps)")
    kmeans_clusters: int = Field(20, ge=1, le=1000, description="centroids of kind kmeans")
    learn_s: float = Field(
        86400.0, gt=0, description="a device the model never saw is learning (scored, never "
                                   "alerting) for its first this many seconds, then judged in "
                                   "its own scale")
    log_metrics: list[str] | None = Field(
        None, description="metrics scaled as log1p per device (heavy-tailed, multiplicative); "
                          "default: the counter metrics and latency")
    adapt_after_s: float | None = Field(
        86400.0, gt=0, description="a metric whose level stays beyond regime_shift_z spreads of its "
                                   "baseline this long is a new normal: one regime_change, then "
                                   "judged against the new level; null never adapts")
    regime_shift_z: float = Field(
        3.0, gt=0, description="how far (in spreads) a metric's smoothed level must move to count "
                               "towards a regime change")
    objective: Literal["forecast", "classify"] = Field(
        "forecast", description="forecast: unsupervised, the score is the forecast error; "
                                "classify: the seed's BCE classifier, needs labels")
    window_steps: int = Field(30, ge=2, le=2000, description="samples in one input window")
    forecast_from_window_mean: bool | None = Field(
        None, description="the forecaster sees each window less its own mean per feature and "
                          "forecasts the next step from there, so a level it never trained at "
                          "(more of a daily cycle) is forecast like a familiar one, but a level "
                          "shift that lasts is only an error for about a window; null: when the "
                          "devices' training history spans less than learn_s")
    hidden_size: int = Field(64, ge=1, le=4096)
    num_layers: int = Field(2, ge=1, le=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="between LSTM layers")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(32, ge=1, le=65536)
    max_epochs: int = Field(100, ge=1)
    patience_epochs: int = Field(10, ge=1, description="stop after this many epochs without improvement")
    min_delta: float = Field(1e-4, ge=0.0, description="smallest validation-loss gain that counts")
    max_train_time_s: float | None = Field(
        60.0, gt=0, description="stop after the epoch that crosses this much training time, "
                                 "keeping the best weights; null for no limit")
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=0.9, description="last share of each device's training history held "
                                         "out for early stopping, calibration and threshold")
    smoothing_steps: int | None = Field(
        None, ge=1, description="EWM span of the error profile in samples; default window_steps")
    threshold_risk: float = Field(
        0.01, gt=0.0, lt=1.0, description="peaks-over-threshold risk: share of normal validation "
                                          "samples allowed above the threshold")
    false_alarms_per_day: float | None = Field(
        1.0, gt=0.0, description="false alarms per device per day the threshold allows, about: "
                                 "caps threshold_risk at this times the smoothing span over the "
                                 "samples in a day, so a device sampled every second is held to "
                                 "the alarms a day of minute samples gets; null: threshold_risk alone")
    threshold_init_quantile: float = Field(0.98, gt=0.0, lt=1.0)
    device_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-device threshold on the calibrated 0..1 score "
                                          "(default 0.5, the fitted threshold)")
    top_k_features: int = Field(3, ge=1, description="metrics named per anomalous point")
    rolling_s: float | None = Field(
        None, gt=0, description="add time-based rolling mean/std of every metric over this many s")
    seed: int = Field(0, ge=0)

    @field_validator("device_thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {d: t for d, t in value.items() if not 0.0 < t < 1.0}
        if bad:
            raise ValueError(f"device_thresholds must lie strictly between 0 and 1, got {bad}")
        return value

    @field_validator("ensemble_members")
    @classmethod
    def _members_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"ensemble_members must not repeat a kind, got {value}")
        return value

    @model_validator(mode="after")
    def _kind_fits(self) -> DetectorConfig:
        if self.objective == "classify" and self.kind != "lstm":
            raise ValueError(f"objective 'classify' is the LSTM's; kind {self.kind!r} forecasts or "
                             "reconstructs (use objective: forecast)")
        if self.subsequence_steps > self.window_steps:
            raise ValueError(f"subsequence_steps ({self.subsequence_steps}) must be <= window_steps "
                             f"({self.window_steps})")
        return self

    @property
    def needs_network(self) -> bool:
        """Whether fitting this kind trains the LSTM (on Ray Train)."""
        return self.kind == "lstm" or (self.kind == "ensemble" and "lstm" in self.ensemble_members)

    @property
    def smoothing(self) -> int:
        return self.smoothing_steps if self.smoothing_steps is not None else self.window_steps

    def for_history(self, span_s: float) -> DetectorConfig:
        """This config with ``forecast_from_window_mean`` decided for a training history whose
        devices span ``span_s`` (their median): as set, or whether that is under ``learn_s``.
        Under a day a device has not shown the levels of its daily cycle, and an absolute
        forecaster flags the ones it missed (a demo device: 60 % of its quiet points); over
        days the absolute level is what finds a shift that lasts (SMD machine-1-7: AUPRC 0.74
        absolute, 0.32 from the window mean)."""
        if self.forecast_from_window_mean is not None:
            return self
        return self.model_copy(update={"forecast_from_window_mean": bool(span_s < self.learn_s)})

    def point_risk(self, sample_interval_s: float | None) -> float:
        """The share of normal points the threshold lets through: ``threshold_risk``, or less
        where ``false_alarms_per_day`` asks for it. A smoothed score stays above its threshold
        for about one smoothing span per excursion, so a budget of B false alarms a day is a
        point risk of B * span / samples per day: 1 a day at one sample a second is 3.5e-4
        with the default span of 30, while minute samples keep the 1 % (2 % would be allowed)."""
        if self.false_alarms_per_day is None or not sample_interval_s or sample_interval_s <= 0:
            return self.threshold_risk
        samples_per_day = 86400.0 / sample_interval_s
        return min(self.threshold_risk, self.false_alarms_per_day * self.smoothing / samples_per_day)


class ClusterConfig(_Section):
    """What a multi-node Ray cluster needs (see the README's cluster setup)."""

    shared_filesystem: bool = Field(
        False, description="local paths in store_uri, artifact_root and cluster.train_storage_path "
                           "are on a filesystem every node mounts at the same place (NFS, EFS); "
                           "without it a job on a multi-node cluster refuses node-local paths")
    train_storage_path: str | None = Field(
        None, description="where Ray Train and Tune keep run checkpoints: a path every node "
                          "reaches or a pyarrow URI (s3://bucket/prefix); default a fresh "
                          "directory on the driver's node (single-node only)")
    gpu_wait_s: float = Field(
        600.0, ge=0, description="how long a job that asks for GPUs waits for the cluster's "
                                 "autoscaler to launch a GPU node before it trains on CPUs")


class EyeNetConfig(_Section):
    """The whole configuration. Field docs say the unit; defaults follow the seed."""

    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1)
    counter_metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_COUNTER_METRICS),
        description="metrics reported as monotonic counters; stored as per-second rates")
    counter_bits: Literal[32, 64] = Field(
        64, description="counter width when a source does not say (SNMP Counter32 wraps at 2**32)")
    max_counter_rate_per_s: float = Field(
        1.25e11, gt=0, description="counter rates above this are absurd unless metric_max says")
    metric_max: dict[str, float] = Field(
        default_factory=dict,
        description="per-metric upper bound (for counters: on the per-second rate); "
                    "larger values are absurd. Merged over DEFAULT_METRIC_MAX")
    sample_interval_s: float = Field(1.0, gt=0, description="expected time between samples")
    max_gap_s: float | None = Field(
        None, gt=0, description="longer silences are gaps; default 3 x sample_interval_s")
    max_lateness_s: float = Field(300.0, ge=0, description="older out-of-order samples are rejected")
    max_future_s: float = Field(60.0, ge=0, description="samples further in the future are rejected")
    registry_poll_interval_s: float = Field(
        5.0, gt=0, description="how often everything that scores (Serve replicas, the feature pool, "
                               "the monitor's drift reference) checks the registry for a new production "
                               "version; they switch in place")
    store_uri: str = "sqlite:///eyenet-data/eyenet.db"
    artifact_root: str = "eyenet-data/artifacts"
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    devices: list[DeviceSpec] = Field(
        default_factory=list, description="real devices and their sources (SNMP, node_exporter, "
                                          "Prometheus queries, a latency probe), polled by "
                                          "`eyenet ingest --source devices`; see eyenet/sources/specs.py")

    @model_validator(mode="before")
    @classmethod
    def _removed_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "window_s" in data:  # it sized nothing: windows count samples
            raise ValueError(f"window_s ({data['window_s']!r}) was removed: a window is "
                             "detector.window_steps samples of sample_interval_s each")
        return data

    @field_validator("metrics", "counter_metrics")
    @classmethod
    def _metric_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not METRIC_NAME_RE.match(name):
                raise ValueError(f"metric name {name!r} must match {METRIC_NAME_RE.pattern}")
        reserved = sorted(set(names) & RESERVED_METRIC_NAMES)
        if reserved:
            raise ValueError(f"metric names {reserved} are reserved for the schema's own columns")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"metric names must be unique, repeated: {dup}")
        return names

    @field_validator("store_uri")
    @classmethod
    def _store_scheme(cls, uri: str) -> str:
        if not uri.startswith(STORE_SCHEMES):
            raise ValueError(f"store_uri must start with one of {', '.join(STORE_SCHEMES)}")
        return uri

    @model_validator(mode="after")
    def _cross_field(self) -> EyeNetConfig:
        unknown = [m for m in self.counter_metrics if m not in self.metrics]
        if unknown:
            raise ValueError(f"counter_metrics {unknown} are not in metrics {self.metrics}")
        unknown = [m for m in self.metric_max if m not in self.metrics]
        if unknown:
            raise ValueError(f"metric_max names {unknown}, which are not in metrics {self.metrics}")
        bad = {m: v for m, v in self.metric_max.items() if not v > 0}
        if bad:
            raise ValueError(f"metric_max values must be > 0, got {bad}")
        check_devices(self.devices, self.metrics, self.counter_metrics)
        return self

    @model_validator(mode="after")
    def _log_metrics_default(self) -> EyeNetConfig:
        if self.detector.log_metrics is None:  # rates from counters and latency are multiplicative
            latency = ["latency"] if "latency" in self.metrics else []
            self.detector.log_metrics = [*self.counter_metrics, *latency]
        return self

    def metric_limit(self, metric: str) -> float:
        """Largest plausible value of ``metric`` (a rate for counters)."""
        if metric in self.metric_max:
            return self.metric_max[metric]
        if metric in DEFAULT_METRIC_MAX:
            return DEFAULT_METRIC_MAX[metric]
        return self.max_counter_rate_per_s if metric in self.counter_metrics else float("inf")

    @property
    def gap_s(self) -> float:
        """Silence longer than this is a gap (explicit ``max_gap_s`` or 3 sample intervals)."""
        return self.max_gap_s if self.max_gap_s is not None else 3.0 * self.sample_interval_s

    # the YAML file load_config read, so a running pipeline can re-read its device list
    _loaded_from: str | None = PrivateAttr(None)

    @property
    def loaded_from(self) -> str | None:
        return self._loaded_from

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], sources: dict[str, str] | None = None) -> EyeNetConfig:
        """Validate ``data``; ``sources`` maps dotted field paths to where a value came from."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, data, sources or {}) from exc


def load_config(path: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None) -> EyeNetConfig:
    """Load defaults < YAML file < environment. ``env`` defaults to ``os.environ``."""
    env = dict(os.environ if env is None else env)
    path = path if path is not None else env.get("EYENET_CONFIG")
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path:
        data = _read_yaml(Path(path))
        for dotted in _leaf_paths(data):
            sources[dotted] = str(path)
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        _check_env_path(key, parts)
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{key}: {'.'.join(parts[:-1])} is not a section", key, raw)
        target[parts[-1]] = _parse_env_value(key, parts, raw)
        sources[".".join(parts)] = key
    config = EyeNetConfig.from_dict(data, sources)
    config._loaded_from = str(path) if path else None
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", None, str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}", None, str(path)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, "
                          f"got {type(data).__name__}", None, str(path), "a YAML mapping")
    return data


def _leaf_paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in DICT_FIELDS:
            paths.extend(_leaf_paths(value, dotted + "."))
        paths.append(dotted)
    return paths


def _check_env_path(key: str, parts: list[str]) -> None:
    model: type[BaseModel] = EyeNetConfig
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            expected = ", ".join(ENV_PREFIX + "__".join([*parts[:i], f]).upper() for f in fields)
            raise ConfigError(f"{key} is not a config setting; expected one of: {expected}",
                              key, None, expected)
        annotation = fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ConfigError(f"{key}: {'.'.join(parts[:i + 1])} has no sub-fields", key)
            model = annotation


def _parse_env_value(key: str, parts: list[str], raw: str) -> Any:
    field = parts[-1]
    text = raw.strip()
    if field in LIST_FIELDS:
        if text.startswith("["):
            return _json(key, text)
        return [item.strip() for item in text.split(",") if item.strip()]
    if field in DICT_FIELDS:
        return _json(key, text)
    if text.lower() in ("", "none", "null") and field in OPTIONAL_FIELDS:
        return None
    return text


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key} is not valid JSON: {exc.msg} at column {exc.colno}", key, text,
                          "JSON") from exc


def _config_error(exc: ValidationError, data: dict[str, Any], sources: dict[str, str]) -> ConfigError:
    lines = []
    first = exc.errors()[0]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown setting (value {value!r}{_source(loc, sources)})")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "value_error":
            if isinstance(value, dict):  # a cross-field rule: the message names the fields
                lines.append(msg if loc == "(top level)" else f"{loc}: {msg}")
            else:
                lines.append(f"{loc} = {value!r}{_source(loc, sources)}: {msg}")
        else:
            expected = msg.removeprefix("Input should be ").removeprefix("Input ")
            lines.append(f"{loc} = {value!r}{_source(loc, sources)}: expected {expected}")
    field = ".".join(str(p) for p in first["loc"]) or None
    return ConfigError("invalid config: " + "; ".join(lines), field, first.get("input"),
                       first["msg"])


def _source(loc: str, sources: dict[str, str]) -> str:
    for dotted in (loc, loc.rsplit(".", 1)[0]):
        if dotted in sources:
            return f", from {sources[dotted]}"
    return ""
