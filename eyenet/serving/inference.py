"""Inference requests and responses, Ray-free: what the HTTP API accepts, checks and returns.

The Serve deployments (``serve_app/``) are thin shells over :class:`InferenceService`, so
request validation and scoring are tested without Ray. A *window* is a device's recent
samples, oldest first; the prediction is for its newest sample, scored exactly as
:meth:`Detector.score` scores that row with the window as context. A window needs at
least ``window_steps + 1`` samples; ``window_steps + smoothing`` samples give the same
smoothed score as live scoring.

Every refusal is a :class:`RequestError` naming the field (``windows[2].values[5][1]``),
which the API turns into a 4xx.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from eyenet.detection.detector import Detector
from eyenet.detection.device_scaling import DeviceStats
from eyenet.detection.device_state import load_device_state
from eyenet.detection.regime import RegimeState
from eyenet.errors import RequestError
from eyenet.store import ComponentStateStore, TelemetryStore
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, parse_timestamps, to_ms

MAX_WINDOWS_PER_REQUEST = 1000
# How long a replica trusts a device's regime as read from the store (the pool changes it
# at most once per adapt_after_s).
REGIME_TTL_S = 30.0
JUDGED, LEARNING = "judged", "learning"


class PredictRequest(BaseModel):
    device_id: str = Field(min_length=1, max_length=256,
                           description="a device the store or a collector knows")


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Window(BaseModel):
    device_id: str = Field("adhoc", min_length=1, max_length=256)
    timestamps: list[float | str] | None = Field(
        None, description="one per row (epoch seconds or ISO 8601); default: one sample_interval_s "
                          "apart, ending now")
    metrics: list[str] | None = Field(
        None, description="column names of values; default: the model's metrics")
    values: list[list[FiniteFloat | None]] = Field(
        description="rows of metric values, oldest first; null for a missing value (NaN and "
                    "infinity are refused)")


class ScoreRequest(BaseModel):
    windows: list[Window] = Field(min_length=1, max_length=MAX_WINDOWS_PER_REQUEST)


class Prediction(BaseModel):
    device_id: str
    is_anomaly: bool
    anomaly_score: float = Field(ge=0.0, le=1.0)
    threshold: float
    model_version: int | None
    timestamp: str
    top_features: list[str]
    state: Literal["judged", "learning"] = Field(
        description="learning: a device the model never saw, still learning its scale (scored, "
                    "never alerting); judged otherwise")


@dataclass
class CheckedWindows:
    """Checked windows as plain arrays, rows of window i after those of window i-1 (arrays
    pickle cheaply between Serve replicas; the frame is built once per batch)."""

    names: list[str]        # each window's device_id
    lengths: list[int]      # rows per window
    ts_ms: np.ndarray       # (rows,) int64, increasing within each window
    values: np.ndarray      # (rows, metrics) float64, NaN where missing

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, names: list[str], lengths: list[int],
                   metrics: list[str]) -> CheckedWindows:
        return cls(list(names), [int(n) for n in lengths], to_ms(frame[TIMESTAMP]).to_numpy(np.int64),
                   frame[metrics].to_numpy(np.float64))

    @classmethod
    def concat(cls, parts: list[CheckedWindows]) -> CheckedWindows:
        if len(parts) == 1:
            return parts[0]
        return cls([n for p in parts for n in p.names], [n for p in parts for n in p.lengths],
                   np.concatenate([p.ts_ms for p in parts]), np.vstack([p.values for p in parts]))

    def frame(self, metrics: list[str], device_column: np.ndarray | None = None) -> pd.DataFrame:
        """As a telemetry frame; ``device_column`` replaces the per-window device ids."""
        frame = pd.DataFrame(self.values, columns=metrics)
        frame.insert(0, TIMESTAMP, pd.to_datetime(self.ts_ms, unit="ms", utc=True))
        devices = np.repeat(np.asarray(self.names, dtype=object), self.lengths)
        frame.insert(0, DEVICE, devices if device_column is None else device_column)
        return frame


class WindowChecker:
    """The request rules for caller-supplied windows; needs only the model's metrics and
    window, so the ingress checks requests before they reach a detector replica."""

    def __init__(self, metrics: list[str], min_rows: int, sample_interval_s: float = 1.0) -> None:
        self.metrics, self.min_rows, self.sample_interval_s = list(metrics), min_rows, sample_interval_s

    def check(self, request: ScoreRequest) -> CheckedWindows:
        arrays, stamps, names, lengths = [], [], [], []
        for i, window in enumerate(request.windows):
            values, ts = self._window(window, f"windows[{i}]")
            arrays.append(values)
            stamps.append(ts)
            names.append(window.device_id)
            lengths.append(len(values))
        return CheckedWindows(names, lengths, np.concatenate(stamps), np.vstack(arrays))

    def _window(self, window: Window, field: str) -> tuple[np.ndarray, np.ndarray]:
        names = window.metrics or self.metrics
        missing = [m for m in self.metrics if m not in names]
        if missing:
            raise RequestError(f"{field}.metrics lacks {missing}; the model scores {self.metrics}",
                               f"{field}.metrics")
        rows = window.values
        if len(rows) < self.min_rows:
            raise RequestError(f"{field}.values has {len(rows)} rows; the model needs at least "
                               f"{self.min_rows} (window_steps + 1)", f"{field}.values")
        width = len(names)
        for i, row in enumerate(rows):
            if len(row) != width:
                raise RequestError(f"{field}.values[{i}] has {len(row)} values, expected {width} "
                                   f"({', '.join(names)})", f"{field}.values[{i}]")
        values = np.array(rows, dtype=np.float64)  # null -> NaN: a missing value
        if names != self.metrics:
            values = values[:, [names.index(m) for m in self.metrics]]
        return values, self._timestamps_ms(window, len(rows), field)

    def _timestamps_ms(self, window: Window, n: int, field: str) -> np.ndarray:
        if window.timestamps is None:
            end_ms = int(time.time() * 1000)
            return end_ms - (np.arange(n)[::-1] * self.sample_interval_s * 1000).astype(np.int64)
        if len(window.timestamps) != n:
            raise RequestError(f"{field}.timestamps has {len(window.timestamps)} entries for {n} rows",
                               f"{field}.timestamps")
        stamps = parse_timestamps(pd.Series(window.timestamps, dtype=object))
        bad = np.flatnonzero(stamps.isna().to_numpy())
        if len(bad):
            raise RequestError(f"{field}.timestamps[{bad[0]}] is {window.timestamps[bad[0]]!r}, not a time",
                               f"{field}.timestamps[{bad[0]}]")
        ms = to_ms(stamps).to_numpy()
        if (np.diff(ms) <= 0).any():
            raise RequestError(f"{field}.timestamps must increase strictly", f"{field}.timestamps")
        return ms


class LiveWindows:
    """The windows ``/v1/predict`` scores: each device's newest ``window_steps + 1 +
    smoothing`` stored samples (the smoothed score live scoring gives), read for a whole
    batch of devices in one store call. A device without samples is refused with 404, one
    with fewer than ``window_steps + 1`` with 409."""

    def __init__(self, store: TelemetryStore, detector: Detector) -> None:
        self.store, self.metrics = store, list(detector.metrics)
        self.min_rows = detector.config.window_steps + 1
        self.rows = self.min_rows + detector.config.smoothing

    def read(self, device_ids: Sequence[str],
             recent: pd.DataFrame | None = None) -> tuple[CheckedWindows, dict[str, RequestError]]:
        """``recent``: samples the collectors hold (by device, then time); a device with a
        whole window there is not read from the store."""
        held: set[str] = set()
        if recent is not None and not recent.empty:
            counts = recent[DEVICE].value_counts()
            held = set(counts.index[counts >= self.rows])
        if not held:
            frame = self.store.last_samples(device_ids, self.rows)
        else:
            parts = [recent[recent[DEVICE].isin(held)].groupby(DEVICE, sort=True).tail(self.rows)]
            missing = [d for d in device_ids if d not in held]
            if missing:
                parts.append(self.store.last_samples(missing, self.rows))
            frame = pd.concat(parts, ignore_index=True).sort_values([DEVICE, TIMESTAMP], kind="stable")
        devices = frame[DEVICE].to_numpy()
        names, starts, counts = np.unique(devices, return_index=True, return_counts=True)
        refused = {d: RequestError(f"unknown device {d!r}: no samples", "device_id", status=404)
                   for d in set(device_ids) - set(names)}
        keep = []
        for name, start, count in zip(names, starts, counts, strict=True):
            if count < self.min_rows:
                refused[name] = RequestError(f"device {name!r} has {count} recent samples; scoring needs "
                                             f"{self.min_rows}", "device_id", status=409)
            else:
                keep.append((str(name), start, count))
        rows = np.concatenate([np.arange(a, a + n) for _, a, n in keep]) if keep else np.empty(0, np.int64)
        checked = CheckedWindows.from_frame(frame.iloc[rows], [k[0] for k in keep], [k[2] for k in keep],
                                            self.metrics)
        return checked, refused


@dataclass
class BatchScores:
    predictions: list[dict[str, Any]]   # one per window, in window order
    newest_features: np.ndarray         # (windows, features): each window's newest feature row


def predict_devices(service: InferenceService, windows: LiveWindows, device_ids: Sequence[str],
                    recent: pd.DataFrame | None = None) -> tuple[list[dict[str, Any] | RequestError],
                                                                  BatchScores]:
    """One prediction per device (its live window) or the reason it cannot be scored, and
    the scores of the windows that were read."""
    checked, refused = windows.read(device_ids, recent)
    batch = service.score_batch(checked)
    scored = dict(zip(checked.names, batch.predictions, strict=True))
    return [refused.get(d) or scored[d] for d in device_ids], batch


class InferenceService:
    """A loaded production detector and the request rules around it."""

    def __init__(self, detector: Detector, model_version: int | None, sample_interval_s: float = 1.0,
                 store: ComponentStateStore | None = None) -> None:
        detector.require_fitted()
        self.detector = detector
        self.model_version = model_version
        # scales the feature pool learned for devices the model never saw (kept in the store)
        self._learned: dict[str, DeviceStats] = {}
        self._regimes: dict[str, tuple[float, RegimeState | None]] = {}
        self.store = store
        self.min_rows = detector.config.window_steps + 1
        self.checker = WindowChecker(detector.metrics, self.min_rows, sample_interval_s)

    def score_checked(self, checked: CheckedWindows) -> list[dict[str, Any]]:
        """One prediction per window (its newest row), all windows in one forward pass."""
        return self.score_batch(checked).predictions

    def score_batch(self, checked: CheckedWindows) -> BatchScores:
        """:meth:`score_checked` plus each window's newest feature row (for drift)."""
        if not checked.names:
            return BatchScores([], np.empty((0, len(self.detector.feature_names)), np.float32))
        # each window is its own series (a key per window, sorting in window order), all
        # scored in one call; the newest row of window i is then row cumsum(lengths)[i] - 1
        keys = np.array([f"{i:09d}\x1f{name}" for i, name in enumerate(checked.names)], dtype=object)
        frame = checked.frame(self.detector.metrics, np.repeat(keys, checked.lengths))
        device_of = _window_device
        cold = self.detector.cold_start(self._learned_scale, alias=device_of)
        # each device judged in the regime the feature pool keeps for it (never moved here)
        regimes = self.detector.regime_tracker(self._regime, alias=device_of, frozen=True) \
            if self.store is not None else None
        rows = self.detector.score_rows(frame, cold, regimes, alias=device_of)
        last = np.cumsum(checked.lengths) - 1
        if not np.array_equal(rows.features.device_ids[last], keys):
            raise RequestError("a window's rows are not in time order", "windows")
        stamps = pd.to_datetime(rows.features.timestamps_ms[last], unit="ms", utc=True)
        states = np.where(rows.learning[last], LEARNING, JUDGED)
        return BatchScores([{"device_id": name, "is_anomaly": bool(flag), "anomaly_score": float(score),
                             "threshold": float(threshold), "model_version": self.model_version,
                             "timestamp": stamp.isoformat(), "top_features": top, "state": str(state)}
                            for name, flag, score, threshold, stamp, top, state in zip(
                                checked.names, rows.is_anomaly[last], rows.score[last], rows.threshold[last],
                                stamps, rows.top_features(last), states, strict=True)],
                           rows.features.values[last])

    def device_states(self, device_ids: Sequence[str]) -> dict[str, str]:
        """``judged`` for devices with a scale (trained, or learned by the pool), else
        ``learning``."""
        known = {*self.detector.scaling.devices, *self.detector.scaling.fleet_scaled}
        return {d: JUDGED if d in known or self._learned_scale(d) is not None else LEARNING
                for d in device_ids}

    def _regime(self, device: str) -> RegimeState | None:
        """The regime the pool keeps for ``device``, re-read at most every REGIME_TTL_S."""
        now = time.monotonic()
        cached = self._regimes.get(device)
        if cached is None or now - cached[0] > REGIME_TTL_S:
            found = load_device_state(self.store, RegimeState, device, self.detector.feature_names)
            cached = self._regimes[device] = (now, found)
        return cached[1]  # a frozen tracker reads it and never moves it

    def _learned_scale(self, device: str) -> DeviceStats | None:
        """A scale the feature pool learned for ``device``, kept once found."""
        if device not in self._learned and self.store is not None:
            found = load_device_state(self.store, DeviceStats, device, self.detector.feature_names)
            if found is not None:
                self._learned[device] = found
        return self._learned.get(device)

    def score_frames(self, frames: list[pd.DataFrame]) -> list[dict[str, Any]]:
        """Score telemetry frames (one window each) as :meth:`score_checked` does."""
        if not frames:
            return []
        names = [str(f.iat[0, f.columns.get_loc(DEVICE)]) for f in frames]
        combined = pd.concat(frames, ignore_index=True)
        return self.score_checked(CheckedWindows.from_frame(combined, names, [len(f) for f in frames],
                                                            self.detector.metrics))

    def score(self, request: ScoreRequest) -> list[dict[str, Any]]:
        return self.score_checked(self.checker.check(request))


def _window_device(key: str) -> str:
    """The device a window key (``<index>\x1f<device>``) names."""
    return key.split("\x1f", 1)[1]
