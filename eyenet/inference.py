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

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from eyenet.detector import Detector
from eyenet.errors import EyeNetError
from eyenet.telemetry import DEVICE, TIMESTAMP, parse_timestamps

MAX_WINDOWS_PER_REQUEST = 1000


class RequestError(EyeNetError, ValueError):
    """A request the API refuses: ``field`` names what was wrong, ``status`` the HTTP code."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message, field, status)
        self.field = field
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])


class PredictRequest(BaseModel):
    device_id: str = Field(min_length=1, max_length=256,
                           description="a device the store or a collector knows")


class Window(BaseModel):
    device_id: str = Field("adhoc", min_length=1, max_length=256)
    timestamps: list[float | str] | None = Field(
        None, description="one per row (epoch seconds or ISO 8601); default: one sample_interval_s "
                          "apart, ending now")
    metrics: list[str] | None = Field(
        None, description="column names of values; default: the model's metrics")
    values: list[list[float | None]] = Field(description="rows of metric values, oldest first")


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


class InferenceService:
    """A loaded production detector and the request rules around it."""

    def __init__(self, detector: Detector, model_version: int | None, sample_interval_s: float = 1.0) -> None:
        detector.require_fitted()
        self.detector = detector
        self.model_version = model_version
        self.sample_interval_s = sample_interval_s
        self.min_rows = detector.config.window_steps + 1

    # -- checking -----------------------------------------------------------------------------
    def window_frame(self, window: Window, field: str = "window") -> pd.DataFrame:
        """A checked telemetry frame for one caller-supplied window."""
        metrics = self.detector.metrics
        names = window.metrics or metrics
        missing = [m for m in metrics if m not in names]
        if missing:
            raise RequestError(f"{field}.metrics lacks {missing}; the model scores {metrics}",
                               f"{field}.metrics")
        if len(window.values) < self.min_rows:
            raise RequestError(f"{field}.values has {len(window.values)} rows; the model needs at least "
                               f"{self.min_rows} (window_steps + 1)", f"{field}.values")
        for i, row in enumerate(window.values):
            if len(row) != len(names):
                raise RequestError(f"{field}.values[{i}] has {len(row)} values, expected {len(names)} "
                                   f"({', '.join(names)})", f"{field}.values[{i}]")
            for j, value in enumerate(row):
                if value is not None and not math.isfinite(value):
                    raise RequestError(f"{field}.values[{i}][{j}] ({names[j]}) is {value}; values must be "
                                       "finite numbers or null", f"{field}.values[{i}][{j}]")
        frame = pd.DataFrame(np.array(window.values, dtype=np.float64), columns=names)[metrics]
        frame.insert(0, TIMESTAMP, self._timestamps(window, field))
        frame.insert(0, DEVICE, window.device_id)
        return frame

    def _timestamps(self, window: Window, field: str) -> pd.Series:
        n = len(window.values)
        if window.timestamps is None:
            end = pd.Timestamp.now(tz="UTC").floor("ms")
            step = pd.Timedelta(seconds=self.sample_interval_s)
            return pd.Series([end - step * (n - 1 - i) for i in range(n)])
        if len(window.timestamps) != n:
            raise RequestError(f"{field}.timestamps has {len(window.timestamps)} entries for {n} rows",
                               f"{field}.timestamps")
        stamps = parse_timestamps(pd.Series(window.timestamps, dtype=object))
        bad = np.flatnonzero(stamps.isna().to_numpy())
        if len(bad):
            raise RequestError(f"{field}.timestamps[{bad[0]}] is {window.timestamps[bad[0]]!r}, not a time",
                               f"{field}.timestamps[{bad[0]}]")
        if not stamps.is_monotonic_increasing or stamps.duplicated().any():
            raise RequestError(f"{field}.timestamps must increase strictly", f"{field}.timestamps")
        return stamps

    # -- scoring ------------------------------------------------------------------------------
    def score_frames(self, frames: list[pd.DataFrame]) -> list[dict[str, Any]]:
        """One prediction per window (its newest row), all windows in one forward pass."""
        if not frames:
            return []
        # each window is its own series (a key per window), scored in one call
        names = [str(f.iat[0, f.columns.get_loc(DEVICE)]) for f in frames]
        keys = np.array([f"{i:06d}\x1f{name}" for i, name in enumerate(names)], dtype=object)
        combined = pd.concat(frames, ignore_index=True)
        combined[DEVICE] = np.repeat(keys, [len(f) for f in frames])
        scores = self.detector.score(combined)
        last = scores.groupby(DEVICE, sort=False).tail(1).set_index(DEVICE).reindex(keys)
        stamps = last[TIMESTAMP].map(pd.Timestamp.isoformat).tolist()
        return [{"device_id": name, "is_anomaly": bool(flag), "anomaly_score": float(score),
                 "threshold": float(threshold), "model_version": self.model_version, "timestamp": stamp,
                 "top_features": list(top)}
                for name, flag, score, threshold, stamp, top in zip(
                    names, last["is_anomaly"], last["score"], last["threshold"], stamps, last["top_features"],
                    strict=True)]

    def score(self, request: ScoreRequest) -> list[dict[str, Any]]:
        frames = [self.window_frame(w, f"windows[{i}]") for i, w in enumerate(request.windows)]
        return self.score_frames(frames)

    def predict_stored(self, device_id: str, window: pd.DataFrame) -> dict[str, Any]:
        """Score a device's live window (from its collector or the store)."""
        if window.empty:
            raise RequestError(f"unknown device {device_id!r}: no samples", "device_id", status=404)
        if len(window) < self.min_rows:
            raise RequestError(f"device {device_id!r} has {len(window)} recent samples; scoring needs "
                               f"{self.min_rows}", "device_id", status=409)
        return self.score_frames([window[[DEVICE, TIMESTAMP, *self.detector.metrics]]])[0]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
