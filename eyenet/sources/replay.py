"""Replay of recorded telemetry files (CSV, gzipped CSV, Parquet) on a clock."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError, TelemetryError
from eyenet.sources.base import FetchResult, Source, check_number
from eyenet.telemetry.files import line_of, read_table, timestamps_of
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, to_ms


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".parquet"):
        name = name.removesuffix(suffix)
    return name


class ReplaySource(Source):
    """Replays recorded telemetry files on a clock, as if the devices were sending it now.

    Files are CSV (optionally gzipped) or Parquet with a ``timestamp`` column, the
    configured metrics (extra columns are ignored, except ``label``) and optionally
    ``device_id``; without it the device is ``device_ids[i]`` or the file's stem. Samples
    keep their recorded timestamps and values, so what is stored equals the file.

    The clock starts at the earliest timestamp of all files when ``origin_wall_s`` passes
    and runs ``speed`` times faster than the wall clock (``math.inf``: all data at once).
    ``origin_wall_s`` is an argument so that a restarted collector, rebuilt with the same
    options, sees the same timeline. With ``loop`` the data repeat after the last sample,
    each round shifted by the recorded span plus one sample interval (counters then
    decrease once per round, which the validator repairs as a reset).
    """

    name = "replay"

    def __init__(self, config: EyeNetConfig, paths: Sequence[str | os.PathLike[str]],
                 speed: float = 1.0, origin_wall_s: float | None = None,
                 device_ids: Sequence[str] | None = None, loop: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = list(config.metrics)
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not isinstance(paths, Sequence) or not paths:
            raise SourceError(f"paths must be a non-empty list of files, got {paths!r}", source=self.name)
        self._speed = check_number(self.name, "speed", speed, 0.0, low_open=True, finite=False)
        if loop and math.isinf(self._speed):
            raise SourceError("speed=inf cannot loop: the replay would never end", source=self.name)
        self._loop = bool(loop)
        self._clock = clock
        self._origin_s = (clock() if origin_wall_s is None
                          else check_number(self.name, "origin_wall_s", origin_wall_s))
        if device_ids is not None and (isinstance(device_ids, str) or len(device_ids) != len(paths)
                                       or not all(isinstance(d, str) and d for d in device_ids)):
            raise SourceError(f"device_ids must give one non-empty id per path ({len(paths)}), "
                              f"got {device_ids!r}", source=self.name)
        frames, derived = [], {}
        for i, raw_path in enumerate(paths):
            path = Path(raw_path)
            given = device_ids[i] if device_ids is not None else None
            frame, own = self._read(path, given)
            if given is None and not own:
                stem = _stem(path)
                if stem in derived:
                    raise SourceError(f"{derived[stem]} and {path} would both be device {stem!r}; "
                                      "pass device_ids to name them", source=self.name)
                derived[stem] = path
            frames.append(frame)
        self._build(frames)

    def _read(self, path: Path, device_id: str | None) -> tuple[pd.DataFrame, bool]:
        """The file as a sample frame, and whether it named its own devices."""
        try:  # the one file reader and timestamp rule; its errors name the file and line
            frame = read_table(path)
            stamps = timestamps_of(path, frame)
        except TelemetryError as exc:
            raise SourceError(f"replay file {exc}", source=self.name) from exc
        missing = [m for m in self.metrics if m not in frame.columns]
        if missing:
            raise SourceError(f"replay file {path} lacks configured metric column(s) {missing}",
                              source=self.name)
        own = DEVICE in frame.columns
        if own and device_id is not None:
            raise SourceError(f"replay file {path} has a {DEVICE} column; do not also give it "
                              "a device id", source=self.name)
        if own:
            ids = frame[DEVICE].astype("string").str.strip()
            blank = ids.isna() | (ids == "")
            if blank.any():
                row = int(np.flatnonzero(blank.to_numpy())[0])
                raise SourceError(f"replay file {path}: line {line_of(row)} has no {DEVICE}",
                                  source=self.name)
            devices = ids.astype(str).to_numpy(dtype=object)
        else:
            devices = np.full(len(frame), device_id or _stem(path), dtype=object)
        out = pd.DataFrame({DEVICE: devices, TIMESTAMP: stamps.to_numpy()})
        for m in self.metrics:
            out[m] = frame[m].to_numpy()
        if LABEL in frame.columns:
            out[LABEL] = frame[LABEL].to_numpy()
        return out, own

    def _build(self, frames: list[pd.DataFrame]) -> None:
        """One frame sorted by (device, time) with per-device row bounds, for searchsorted."""
        has_label = any(LABEL in f.columns for f in frames)
        frame = pd.concat([f.reindex(columns=[DEVICE, TIMESTAMP, *self.metrics,
                                              *([LABEL] if has_label else [])]) for f in frames],
                          ignore_index=True)
        frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
        ms = to_ms(frame[TIMESTAMP]).to_numpy()
        order_of = {d: i for i, d in enumerate(dict.fromkeys(frame[DEVICE]))}
        dev_rank = frame[DEVICE].map(order_of).to_numpy()
        order = np.lexsort((ms, dev_rank))
        self._frame = frame.iloc[order].reset_index(drop=True)
        self._ms = ms[order]
        ranks = dev_rank[order]
        starts = np.searchsorted(ranks, np.arange(len(order_of)), "left")
        ends = np.searchsorted(ranks, np.arange(len(order_of)), "right")
        self._bounds = {d: (int(starts[i]), int(ends[i])) for d, i in order_of.items()}
        self._first_ms, self._last_ms = int(self._ms.min()), int(self._ms.max())
        steps = np.concatenate([np.diff(self._ms[a:b]) for a, b in self._bounds.values()])
        steps = steps[steps > 0]
        self.interval_s = float(np.median(steps)) / 1000.0 if len(steps) else 1.0
        self._period_ms = self._last_ms - self._first_ms + max(1, round(self.interval_s * 1000))

    def devices(self) -> list[str]:
        return list(self._bounds)

    def first_ms(self) -> int | None:
        return self._first_ms

    def now_ms(self) -> int:
        if math.isinf(self._speed):
            return self._last_ms
        now = int(self._first_ms + (self._clock() - self._origin_s) * 1000.0 * self._speed)
        # a replay that does not loop ends at its last sample: collectors then count as caught up
        return now if self._loop else min(now, self._last_ms)

    def fetch(self, device_ids: Sequence[str], since_ms: int, until_ms: int) -> FetchResult:
        until_ms = min(int(until_ms), self.now_ms())
        since_ms = int(since_ms)
        failed = {d: f"replay has no device {d!r}" for d in device_ids if d not in self._bounds}
        wanted = [self._bounds[d] for d in dict.fromkeys(device_ids) if d in self._bounds]
        if self._loop:
            rounds = range(max(0, (since_ms - self._last_ms) // self._period_ms + 1),
                           (until_ms - self._first_ms) // self._period_ms + 1)
        else:
            rounds = range(1)
        parts = []
        for k in rounds:
            shift = k * self._period_ms
            idx = [np.arange(a + np.searchsorted(self._ms[a:b], since_ms - shift, "right"),
                             a + np.searchsorted(self._ms[a:b], until_ms - shift, "right"))
                   for a, b in wanted]
            rows = np.concatenate(idx) if idx else np.zeros(0, np.int64)
            if len(rows):
                part = self._frame.iloc[rows]
                if shift:
                    part = part.assign(**{TIMESTAMP: part[TIMESTAMP] + pd.Timedelta(milliseconds=shift)})
                parts.append(part)
        if not parts:
            return FetchResult(self._frame.iloc[:0].copy(), failed)
        return FetchResult(pd.concat(parts, ignore_index=True), failed)
