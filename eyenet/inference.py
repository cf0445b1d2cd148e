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

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from eyenet.detector import Detector
from eyenet.errors import RequestError
from eyenet.telemetry import DEVICE, TIMESTAMP, parse_timestamps, to_ms

MAX_WINDOWS_PER_REQUEST = 1000


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


@dataclass
class CheckedWindows:
    """Checked windows as one telemetry frame (rows of window i follow window i-1)."""

    frame: pd.DataFrame
    names: list[str]        # each window's device_id
    lengths: list[int]      # rows per window


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
        frame = pd.DataFrame(np.vstack(arrays), columns=self.metrics)
        frame.insert(0, TIMESTAMP, pd.to_datetime(np.concatenate(stamps), unit="ms", utc=True))
        frame.insert(0, DEVICE, np.repeat(np.asarray(names, dtype=object), lengths))
        return CheckedWindows(frame, names, lengths)

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
            end_ms = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
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


class InferenceService:
    """A loaded production detector and the request rules around it."""

    def __init__(self, detector: Detector, model_version: int | None, sample_interval_s: float = 1.0) -> None:
        detector.require_fitted()
        self.detector = detector
        self.model_version = model_version
        self.min_rows = detector.config.window_steps + 1
        self.checker = WindowChecker(detector.metrics, self.min_rows, sample_interval_s)

    def score_checked(self, checked: CheckedWindows) -> list[dict[str, Any]]:
        """One prediction per window (its newest row), all windows in one forward pass."""
        if not checked.names:
            return []
        # each window is its own series (a key per window, sorting in window order), all
        # scored in one call; the newest row of window i is then row cumsum(lengths)[i] - 1
        keys = np.array([f"{i:09d}\x1f{name}" for i, name in enumerate(checked.names)], dtype=object)
        combined = checked.frame.copy()
        combined[DEVICE] = np.repeat(keys, checked.lengths)
        rows = self.detector.score_rows(combined)
        last = np.cumsum(checked.lengths) - 1
        if not np.array_equal(rows.features.device_ids[last], keys):
            raise RequestError("a window's rows are not in time order", "windows")
        stamps = pd.to_datetime(rows.features.timestamps_ms[last], unit="ms", utc=True)
        return [{"device_id": name, "is_anomaly": bool(flag), "anomaly_score": float(score),
                 "threshold": float(threshold), "model_version": self.model_version,
                 "timestamp": stamp.isoformat(), "top_features": top}
                for name, flag, score, threshold, stamp, top in zip(
                    checked.names, rows.is_anomaly[last], rows.score[last], rows.threshold[last], stamps,
                    rows.top_features(last), strict=True)]

    def score_frames(self, frames: list[pd.DataFrame]) -> list[dict[str, Any]]:
        """Score telemetry frames (one window each) as :meth:`score_checked` does."""
        if not frames:
            return []
        columns = [DEVICE, TIMESTAMP, *self.detector.metrics]
        names = [str(f.iat[0, f.columns.get_loc(DEVICE)]) for f in frames]
        combined = pd.concat([f if list(f.columns) == columns else f[columns] for f in frames],
                             ignore_index=True)
        return self.score_checked(CheckedWindows(combined, names, [len(f) for f in frames]))

    def score(self, request: ScoreRequest) -> list[dict[str, Any]]:
        return self.score_checked(self.checker.check(request))
