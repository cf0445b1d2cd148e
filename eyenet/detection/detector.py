"""The anomaly detector: features -> scaled windows -> error model -> error profile ->
calibrated score -> decision rule, with attribution (Merlion's shape: a config plus
``fit``, ``score``, ``save``, ``load``; each link a small object).

The error model is the detector's kind (``detector.kind``: the seed's LSTM, PCA, k-means,
an ensemble; see :mod:`eyenet.detection.error_models`); everything around it is the same for every
kind, so the registry, Serve, the feature pool and the promotion gate take any of them.

Training is split so the same detector can be trained in-process (:meth:`Detector.fit`)
or on Ray Train (``jobs/train.py``): :meth:`prepare` builds features, fits the scaler on
the training part and picks the windows; a loop turns them into weights (kinds with a
network only); :meth:`finish` fits the in-process kinds and scores the held-out part to
fit calibration and threshold. The held-out part is the last
``validation_fraction`` of each device's history, so it is later in time than anything
trained on, as production data will be.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eyenet.config import DetectorConfig
from eyenet.detection.decision import DecisionRule
from eyenet.detection.device_scaling import ColdStart, DeviceScaler, ScaledRows
from eyenet.detection.error_models import (
    IN_PROCESS_KINDS,
    EnsembleModel,
    ErrorModel,
    lstm_from_weights,
    model_from_state,
)
from eyenet.detection.features import (
    FeatureFrame,
    Scaler,
    build_features,
    feature_reference,
    flags_in_last,
    held_out_tail,
    split_segments,
    window_targets,
    windows_at,
)
from eyenet.detection.networks import usable_device
from eyenet.detection.regime import RegimeChange, RegimeTracker, training_deviation
from eyenet.detection.scoring import Calibrator, smoothed_errors, top_features
from eyenet.detection.training import FitResult, fit_in_process
from eyenet.errors import ArtifactError, TelemetryError
from eyenet.models.artifacts import load_weights
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, from_ms, parse_timestamps, to_ms

WEIGHTS_FILE, META_FILE, REFERENCE_FILE = "weights.pt", "detector.json", "reference.json"
# 2: the kind and its parameters are saved; weights.pt only for kinds with a network.
# Version 1 (the LSTM only) still loads.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


@dataclass
class TrainingData:
    """Scaled features of the training history and which rows are forecast targets."""

    features: FeatureFrame
    scaled: np.ndarray        # (rows, F) float32
    train_targets: np.ndarray  # row indices
    val_targets: np.ndarray
    val_rows: np.ndarray       # bool mask of held-out rows

    def arrays(self, targets: np.ndarray, window: int, objective: str) -> tuple[np.ndarray, np.ndarray]:
        x = windows_at(self.scaled, targets, window)
        if objective == "forecast":
            return x, self.scaled[targets]
        return x, self.features.flagged[targets].astype(np.float32)[:, None]


@dataclass
class ScoredRows:
    """Per-row scores of a telemetry frame (see :meth:`Detector.score`)."""

    features: FeatureFrame
    score: np.ndarray           # calibrated, 0..1; 0 where unscored
    raw: np.ndarray             # raw score, NaN where unscored
    threshold: np.ndarray
    is_anomaly: np.ndarray
    contrib: np.ndarray         # (rows, features) per-feature contribution
    scored: np.ndarray          # bool: the row had a full window in its segment
    feature_names: list[str]
    top_k: int
    regime_changes: list[RegimeChange] = field(default_factory=list)
    learning: np.ndarray | None = None   # bool: the device was still learning its scale

    def regime_events(self) -> list[tuple[str, int, list[str]]]:
        """(device, ms, feature names) of each regime change among the rows."""
        feats = self.features
        return [(str(feats.device_ids[c.row]), int(feats.timestamps_ms[c.row]),
                 [self.feature_names[f] for f in c.features]) for c in self.regime_changes]

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        """:meth:`Detector.score`'s output frame for ``rows``."""
        feats, scored = self.features, self.scored[rows]
        tops = self.top_features(rows)
        out = pd.DataFrame({DEVICE: feats.device_ids[rows], TIMESTAMP: from_ms(feats.timestamps_ms[rows]),
                            "score": self.score[rows], "raw_score": np.where(scored, self.raw[rows], np.nan),
                            "threshold": self.threshold[rows], "is_anomaly": self.is_anomaly[rows],
                            "top_features": tops})
        out["top_feature"] = [t[0] if t else "" for t in tops]
        out["learning"] = np.zeros(len(rows), bool) if self.learning is None else self.learning[rows]
        # the features whose new level was adopted at this row (space-separated), else ""
        adopted = {c.row: " ".join(self.feature_names[f] for f in c.features) for c in self.regime_changes}
        out["regime_change"] = [adopted.get(int(r), "") for r in rows]
        return out

    def top_features(self, rows: np.ndarray) -> list[list[str]]:
        """The top_k features by contribution at each of ``rows``; none for unscored rows."""
        rows = np.asarray(rows)
        ranked = top_features(np.nan_to_num(self.contrib[rows]), self.feature_names, self.top_k)
        return [top if ok else [] for top, ok in zip(ranked, self.scored[rows], strict=True)]


class Detector:
    def __init__(self, config: DetectorConfig, metrics: list[str], gap_s: float) -> None:
        self.config = config
        self.metrics = list(metrics)
        self.gap_s = float(gap_s)
        self.feature_names: list[str] = []
        self.scaling: DeviceScaler | None = None
        self.calibrator: Calibrator | None = None
        self.model: ErrorModel | None = None
        self.rule = DecisionRule(devices=dict(config.device_thresholds))
        self.sample_interval_s: float | None = None  # median spacing of the training history
        self.regime_reference: np.ndarray | None = None  # training noise per feature (see regime.py)
        self.error_prior: np.ndarray | None = None  # where each segment's profile starts (scoring.py)
        self.reference: dict[str, Any] = {}
        self.training: dict[str, Any] = {}

    # -- features ---------------------------------------------------------------------------
    def features(self, frame: pd.DataFrame) -> FeatureFrame:
        return build_features(frame, self.metrics, gap_s=self.gap_s, rolling_s=self.config.rolling_s)

    # -- training ---------------------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> TrainingData:
        feats = self.features(frame)
        self.config = self.config.for_history(median_span_s(feats.device_ids, feats.timestamps_ms))
        cfg, window = self.config, self.config.window_steps
        self.feature_names = feats.names
        val_rows = held_out_tail(feats.device_ids, cfg.validation_fraction)
        fit_rows = ~feats.flagged
        if not fit_rows.any():
            raise TelemetryError("no unflagged training rows left to fit the scaler on")
        # Each device's scaling sees its whole training history, held-out tail included: a
        # metric that only starts moving late in training must not look like a 50-sigma
        # event to the calibration (test data never reaches it).
        logged = set(cfg.log_metrics or []) & set(self.metrics)
        log_features = np.array([n in logged for n in feats.names], bool)
        self.scaling = DeviceScaler.fit(feats.values[fit_rows], feats.device_ids[fit_rows], log_features,
                                        feats.timestamps_ms[fit_rows], cfg.learn_s)
        same = np.diff(feats.segments) == 0
        spacing_ms = np.diff(feats.timestamps_ms)[same]
        self.sample_interval_s = float(np.median(spacing_ms)) / 1000.0 if len(spacing_ms) else self.gap_s
        scaled = self.scaled(feats).scaled
        self.regime_reference = training_deviation(scaled[fit_rows])
        # held-out rows start new segments so no window mixes training and validation rows
        split = np.r_[False, val_rows[1:] != val_rows[:-1]]
        segments = split_segments(feats.segments, split)
        exclude = feats.flagged if cfg.objective == "forecast" else None
        targets = window_targets(segments, window, exclude)
        train_t, val_t = targets[~val_rows[targets]], targets[val_rows[targets]]
        if len(train_t) == 0 or len(val_t) == 0:
            raise TelemetryError(
                f"not enough history: {len(feats)} rows give {len(train_t)} training and "
                f"{len(val_t)} validation windows of {window} steps (validation_fraction="
                f"{cfg.validation_fraction}); need at least one of each")
        if cfg.objective == "classify" and not feats.flagged[train_t].any():
            raise TelemetryError("objective 'classify' needs labelled anomalies (label=1) in training")
        self.reference = feature_reference(feats.values[fit_rows], feats.names)
        return TrainingData(feats, scaled, train_t, val_t, val_rows)

    def fit(self, frame: pd.DataFrame, max_epochs: int | None = None) -> Detector:
        """Train in this process (the plain loop); Ray Train does the same in jobs/train.py."""
        data = self.prepare(frame)
        cfg = self.config
        result = None
        if cfg.needs_network:
            result = fit_in_process(cfg, data.arrays(data.train_targets, cfg.window_steps, cfg.objective),
                                    data.arrays(data.val_targets, cfg.window_steps, cfg.objective),
                                    max_epochs=max_epochs)
        return self.finish(result, data)

    def finish(self, result: FitResult | None, data: TrainingData) -> Detector:
        """Build the kind's model (the network from ``result``'s best weights, the others
        fitted here on the training windows) and fit calibration and threshold on held-out
        rows. ``result`` is None for kinds without a network."""
        cfg = self.config
        if cfg.needs_network and result is None:
            raise TelemetryError(f"detector kind {cfg.kind!r} needs trained network weights")
        val = data.features.select(np.flatnonzero(data.val_rows))
        val_scaled, normal = self.held_out_normal(val)
        if not normal.any():
            raise TelemetryError("every held-out window touches a labelled incident; nothing "
                                 "normal is left to calibrate the threshold on")

        risk = cfg.point_risk(self.sample_interval_s)

        def calibrated(model: ErrorModel) -> Calibrator:
            raw = self.raw_scores(val, val_scaled, val.segments, model)[0]
            return Calibrator.fit(raw[normal], risk=risk, init_quantile=cfg.threshold_init_quantile)

        if cfg.kind == "ensemble":
            members = [self._member(kind, result, data) for kind in cfg.ensemble_members]
            # each member in units of its own threshold: the mean of calibrated scores
            scales = [max(c.threshold - c.baseline, 1e-12) for c in map(calibrated, members)]
            self.model = EnsembleModel(members, scales)
        else:
            self.model = self._member(cfg.kind, result, data)
        # the classifier's output is already a probability: scored as is, threshold 0.5
        if self.model.outputs_probability:
            self.calibrator = Calibrator(0.0, 1.0)
            self.rule = DecisionRule(devices=dict(cfg.device_thresholds))
        else:
            # the typical normal error each feature's profile starts from (scoring.smoothed_errors),
            # from the same forward pass as the scores the threshold is fitted on
            errors = self.raw_scores(val, val_scaled, val.segments, smooth=False)[1]
            self.error_prior = np.nanmedian(self.profile(errors, val.segments, None)[1][normal], axis=0)
            raw = self.profile(errors, val.segments, self.error_prior)[0][normal]
            tail = {"risk": risk, "init_quantile": cfg.threshold_init_quantile}
            self.calibrator = Calibrator.fit(raw, **tail)
            self.rule = DecisionRule.fit(raw, val.device_ids[normal], self.calibrator, **tail,
                                         overrides=cfg.device_thresholds)
        self.training = {"kind": cfg.kind, "train_windows": len(data.train_targets),
                         "val_windows": len(data.val_targets),
                         "excluded_flagged_rows": int(data.features.flagged.sum()), "threshold_risk": risk}
        if result is not None:
            self.training.update({"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                                  "epochs": len(result.history), "train_seconds": result.train_seconds})
        return self

    def held_out_normal(self, val: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        """Held-out rows as scoring sees them (scaled, regime-adapted), and which of them
        are normal: scored with a full window, and no labelled incident in their window or
        smoothing memory. Calibration is fitted on those rows' raw scores."""
        cfg = self.config
        val_scaled = self.adapted(val, self.scaled(val).scaled)[0]
        scored = np.zeros(len(val), bool)
        scored[window_targets(val.segments, cfg.window_steps)] = True
        normal = scored & (flags_in_last(val.flagged, cfg.window_steps + cfg.smoothing) == 0)
        return val_scaled, normal

    def _member(self, kind: str, result: FitResult | None, data: TrainingData) -> ErrorModel:
        if kind == "lstm":
            return lstm_from_weights(self.config, len(self.feature_names), result.state_dict)
        return IN_PROCESS_KINDS[kind].fit(data.scaled, data.train_targets, self.config)

    # -- scoring ----------------------------------------------------------------------------
    def score(self, frame: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
        """Score every row of ``frame``; ``history`` (earlier rows) only provides context.

        Returns one row per input row, ordered by device then time, with ``device_id,
        timestamp, score`` (0..1), ``raw_score, threshold, is_anomaly, top_features``
        (list, most to least) and ``top_feature``. Rows without a full window of
        history in their segment get score 0 and no features.
        """
        self.require_fitted()
        if history is not None and not history.empty:
            # rows present in both are the frame's own; history only adds earlier context
            frame_keys = _keys(frame)
            history = history[~_keys(history).isin(frame_keys)]
        context = frame if history is None or history.empty else pd.concat(
            [history[[c for c in frame.columns if c in history.columns]], frame], ignore_index=True)
        rows = self.score_rows(context)
        own = np.ones(len(rows.features), bool)
        if context is not frame:
            feats = rows.features
            own = pd.MultiIndex.from_arrays([feats.device_ids, feats.timestamps_ms]).isin(frame_keys)
        return rows.frame(np.flatnonzero(own))

    def score_rows(self, frame: pd.DataFrame, cold: ColdStart | None = None,
                   regimes: RegimeTracker | None = None, alias: Any = None) -> ScoredRows:
        """:meth:`score`'s numbers as arrays, rows ordered by device then time: what a caller
        that wants a few rows (the newest of each window) uses without building a frame.
        ``cold``: where unseen devices' learned scales come from, ``regimes``: devices'
        regimes (default: a fresh learner and tracker, from the frame's first rows);
        ``alias``: row key -> device, where the frame's device ids are keys (Serve's windows)."""
        self.require_fitted()
        feats = self.features(frame)
        rows = self.scaled(feats, cold)
        inputs, changes = self.adapted(feats, rows.scaled, regimes, advance=~rows.learning)
        raw, contrib, scored = self.raw_scores(feats, inputs, rows.segments)
        return self.scored_rows(feats, raw, contrib, scored, changes, rows.learning, alias)

    def cold_start(self, lookup: Any = None, alias: Any = None) -> ColdStart:
        """A learner of unseen devices' statistics (``lookup``: device -> DeviceStats saved
        earlier, or None; ``alias``: row key -> device); a live scorer keeps one, offline
        scoring starts a fresh one."""
        return ColdStart(self.scaling, self.config.learn_s, lookup, alias)

    def scaled(self, feats: FeatureFrame, cold: ColdStart | None = None,
               advance: np.ndarray | None = None) -> ScaledRows:
        """Each row scaled by its device's statistics (see eyenet.detection.device_scaling)."""
        cold = cold or self.cold_start()
        return cold.apply(feats.values, feats.device_ids, feats.timestamps_ms, feats.segments, advance)

    def regime_tracker(self, lookup: Any = None, alias: Any = None,
                       frozen: bool = False) -> RegimeTracker | None:
        """A tracker of each device's regime (None when ``adapt_after_s`` is null); see
        :class:`eyenet.detection.regime.RegimeTracker` for ``lookup``, ``alias`` and ``frozen``."""
        if self.config.adapt_after_s is None:
            return None
        interval_s = self.sample_interval_s or self.gap_s
        steps = max(1, round(self.config.adapt_after_s / interval_s))
        return RegimeTracker(steps, self.config.regime_shift_z, self.regime_reference, lookup=lookup,
                             alias=alias, frozen=frozen)

    def adapted(self, feats: FeatureFrame, scaled: np.ndarray, tracker: RegimeTracker | None = None,
                advance: np.ndarray | None = None) -> tuple[np.ndarray, list[RegimeChange]]:
        """Scaled inputs judged against each device's current regime (see eyenet.detection.regime), and
        the regime changes among the rows; ``tracker`` carries state between calls (the pool),
        a fresh one is used otherwise (offline scoring, from the first row given)."""
        if tracker is None:
            tracker = self.regime_tracker()
            # a fresh tracker over fewer rows than a regime takes changes nothing (windows
            # sent to Serve): skipped, as its state is thrown away
            if tracker is None or not tracker.can_change(feats.device_ids):
                return scaled, []
        return tracker.apply(scaled, feats.device_ids, advance, feats.timestamps_ms)

    def scored_rows(self, feats: FeatureFrame, raw: np.ndarray, contrib: np.ndarray,
                    scored: np.ndarray, regime_changes: list[RegimeChange] | None = None,
                    learning: np.ndarray | None = None, alias: Any = None) -> ScoredRows:
        """Calibrated scores, thresholds and flags from raw scores and contributions; a
        device still learning its statistics is scored and never alerts. ``alias``: row key
        -> device, for the per-device thresholds (see :meth:`score_rows`)."""
        score = np.where(scored, self.calibrate(raw), 0.0)
        thresholds = self.rule.thresholds(feats.device_ids, alias)
        learning = np.zeros(len(score), bool) if learning is None else learning
        decision = self.rule.decide(score, scored, thresholds) & ~learning
        return ScoredRows(feats, score, raw, thresholds, decision, contrib, scored, self.feature_names,
                          self.config.top_k_features, regime_changes or [], learning)

    def raw_scores(self, feats: FeatureFrame, scaled: np.ndarray, segments: np.ndarray,
                   model: ErrorModel | None = None,
                   smooth: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw score, per-feature contribution, scored mask) for every row, by ``model``
        (default: the detector's own). ``smooth=False``: the contributions before the error
        profile (raw left missing), for :meth:`profile` with a prior fitted on them."""
        model = model or self.model
        window = self.config.window_steps
        targets = window_targets(segments, window)
        n, n_feat = len(scaled), scaled.shape[1]
        scored = np.zeros(n, bool)
        scored[targets] = True
        contrib = np.full((n, n_feat), np.nan)
        raw = np.full(n, np.nan)
        if len(targets) == 0:
            return raw, contrib, scored
        point_contrib, point_raw = self.point_errors(scaled, targets, model)
        contrib[targets] = point_contrib
        if model.outputs_probability:
            raw[targets] = point_raw
        elif smooth:
            raw, contrib = self.profile(contrib, segments, self.error_prior if model is self.model else None)
        return raw, contrib, scored

    def profile(self, errors: np.ndarray, segments: np.ndarray,
                prior: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(raw score, smoothed contributions) of unsmoothed per-feature ``errors``: the error
        profile started from ``prior`` (see eyenet.detection.scoring.smoothed_errors)."""
        contrib = smoothed_errors(errors, segments, self.config.smoothing, prior)
        return contrib.sum(axis=1), contrib

    @property
    def smoothed(self) -> bool:
        """Whether raw scores are the smoothed error profile (not a classifier's probability)."""
        return not self.model.outputs_probability

    def point_errors(self, scaled: np.ndarray, targets: np.ndarray,
                     model: ErrorModel | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Unsmoothed per-feature contributions at ``targets`` and, for ``classify``, the
        raw probability. The one model call offline and streaming scoring share."""
        model = model or self.model
        if len(targets) == 0:
            empty = np.empty((0, scaled.shape[1]))
            return empty, (np.empty(0) if model.outputs_probability else None)
        return model.point_errors(scaled, targets, self.config.window_steps)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores to the calibrated 0..1 score (NaN counts as 0)."""
        if self.model.outputs_probability:
            return np.clip(np.nan_to_num(raw), 0.0, 1.0)
        return self.calibrator(np.nan_to_num(raw))

    def require_fitted(self) -> None:
        if self.model is None or self.scaling is None or self.calibrator is None:
            raise TelemetryError("the detector is not fitted: call fit() or load() first")

    # -- persistence ------------------------------------------------------------------------
    def use_device(self, device: torch.device | str) -> None:
        """Score on ``device`` (a GPU for a GPU replica); the CPU, with a warning, when
        this process cannot use it."""
        self.model.to_device(usable_device(device, "the detector"))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        self.require_fitted()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        net = self.model.network()
        if net is not None:
            torch.save(net.state_dict(), path / WEIGHTS_FILE)
        meta = {"format_version": FORMAT_VERSION, "config": self.config.model_dump(mode="json"),
                "metrics": self.metrics, "gap_s": self.gap_s, "feature_names": self.feature_names,
                "kind": self.model.kind, "model": self.model.state(),
                "sample_interval_s": self.sample_interval_s,
                "regime_reference": None if self.regime_reference is None else self.regime_reference.tolist(),
                "scaling": self.scaling.to_dict(), "calibration": self.calibrator.to_dict(),
                "thresholds": self.rule.to_dict(), "training": self.training,
                "error_prior": None if self.error_prior is None else self.error_prior.tolist()}
        (path / META_FILE).write_text(json.dumps(meta, indent=1))
        (path / REFERENCE_FILE).write_text(json.dumps(self.reference))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Detector:
        path = Path(directory)
        try:
            meta = json.loads((path / META_FILE).read_text())
            reference = json.loads((path / REFERENCE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"cannot read detector from {path}: {exc}") from exc
        if meta.get("format_version") not in READABLE_FORMATS:
            raise ArtifactError(f"{path / META_FILE} has format_version {meta.get('format_version')}, "
                                f"this EyeNet reads {', '.join(map(str, READABLE_FORMATS))}")
        try:
            # models saved before forecasts were made from the window's mean forecast levels
            config = {"forecast_from_window_mean": False, **meta["config"]}
            det = cls(DetectorConfig.model_validate(config), meta["metrics"], meta["gap_s"])
            det.feature_names = meta["feature_names"]
            det.scaling = DeviceScaler.from_dict(meta["scaling"]) if "scaling" in meta else \
                DeviceScaler(Scaler.from_dict(meta["scaler"]), {}, np.zeros(len(det.feature_names), bool))
            det.sample_interval_s = meta.get("sample_interval_s")
            if meta.get("regime_reference") is not None:
                det.regime_reference = np.asarray(meta["regime_reference"], np.float64)
            det.calibrator = Calibrator.from_dict(meta["calibration"])
            det.rule = DecisionRule.from_dict(meta.get("thresholds") or {})
            if meta.get("error_prior") is not None:   # saved since the profile has a prior
                det.error_prior = np.asarray(meta["error_prior"], np.float64)
            det.training, det.reference = meta.get("training", {}), reference
            kind = meta.get("kind", "lstm")  # format 1 saved the LSTM only
            weights = load_weights(path / WEIGHTS_FILE) if (path / WEIGHTS_FILE).exists() else None
            det.model = model_from_state(kind, meta.get("model") or {}, det.config,
                                         len(det.feature_names), weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"detector in {path} is inconsistent: {type(exc).__name__}: {exc}") from exc
        return det


def median_span_s(device_ids: np.ndarray, timestamps_ms: np.ndarray) -> float:
    """The median over devices of the time from a device's first row to its last, in s."""
    if len(device_ids) == 0:
        return 0.0
    spans = pd.Series(np.asarray(timestamps_ms, np.int64)).groupby(np.asarray(device_ids)).agg(["min", "max"])
    return float(np.median(spans["max"] - spans["min"])) / 1000.0


def _keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([frame[DEVICE].astype(str).to_numpy(),
                                      to_ms(parse_timestamps(frame[TIMESTAMP])).to_numpy()])
