"""Telemetry sources: the one interface collectors poll, and replay of recorded files.

A source is read by *time range in the sample-timestamp domain*, never "give me what is
new": ``fetch(devices, since_ms, until_ms)`` returns the samples with
``since_ms < timestamp <= until_ms`` and the same call always returns the same samples.
That is what makes collection crash-safe: a collector keeps one cursor per device (the
last ``until_ms`` it wrote), saves it in the store, and after a restart re-fetches from the
saved cursor; the store's idempotent writes on (device_id, timestamp) drop what it already
holds. ``now_ms()`` says how far the source's timeline has got, so a poll is
``fetch(devices, cursor, source.now_ms())``; a fetch never returns samples past
``now_ms()``.

Samples come back raw, as a device would send them: counters cumulative, values possibly
NaN, text or negative. Cleaning them is :mod:`eyenet.telemetry`'s job, not the source's.

A failure of the whole source raises :class:`SourceError`; one device failing lands in
``FetchResult.failed`` so that the other devices still make progress.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError
from eyenet.telemetry import DEVICE, LABEL, TIMESTAMP, parse_timestamps, to_ms

SOURCE_KINDS = ("simulated", "replay")


@dataclass
class FetchResult:
    """What one fetch delivered.

    ``samples`` has ``device_id``, ``timestamp`` (tz-aware UTC, or garbage objects when the
    source injects bad input), one column per configured metric and optionally ``label``.
    ``failed`` maps device_id -> error message for devices whose read failed this time.
    """

    samples: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)


class Source(ABC):
    """A telemetry source. Subclasses set ``name`` and ``interval_s``."""

    name: str = "source"
    interval_s: float = 1.0

    @abstractmethod
    def devices(self) -> list[str]:
        """Device ids this source can deliver."""

    @abstractmethod
    def now_ms(self) -> int:
        """Current position of the source's timeline in epoch ms (what a poll now can reach)."""

    @abstractmethod
    def fetch(self, device_ids: Sequence[str], since_ms: int, until_ms: int) -> FetchResult:
        """Samples of these devices with ``since_ms < timestamp <= min(until_ms, now_ms())``.

        Deterministic: the same call returns the same samples. Raises :class:`SourceError`
        when the whole source failed; a device that failed goes to ``failed``.
        """

    def first_ms(self) -> int | None:
        """Timestamp of the earliest sample the source holds, when it knows (a replay);
        a collector starting fresh begins just before it. None: start at ``now_ms()``."""
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook, deliberately not abstract
        """Release connections or files; the base source holds none."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def empty_samples(metrics: Sequence[str], label: bool = True) -> pd.DataFrame:
    """A sample frame with no rows but the schema's columns and dtypes."""
    columns: dict[str, Any] = {DEVICE: pd.Series([], dtype=object),
                               TIMESTAMP: pd.Series([], dtype="datetime64[ns, UTC]")}
    columns.update({m: pd.Series([], dtype="float64") for m in metrics})
    if label:
        columns[LABEL] = pd.Series([], dtype="int8")
    return pd.DataFrame(columns)


def build_source(kind: str, config: EyeNetConfig, **options: Any) -> Source:
    """Build a source by kind name; ``options`` are the source class's keyword arguments.

    Unknown kinds and unknown options are :class:`SourceError` naming them and the choices,
    so a typo in a CLI flag or a config file fails loudly instead of being ignored.
    """
    cls: type[Source]
    if kind == "simulated":
        from eyenet.simulate import SimulatedSource  # lazy: simulate imports this module

        cls = SimulatedSource
    elif kind == "replay":
        cls = ReplaySource
    else:
        raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}",
                          source=str(kind))
    accepted = [p for p in inspect.signature(cls).parameters if p != "config"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SourceError(f"{kind} source has no option(s) {unknown}; options are {accepted}",
                          source=kind)
    return cls(config, **options)


def check_number(source: str, option: str, value: Any, low: float | None = None,
                 high: float | None = None, *, low_open: bool = False,
                 finite: bool = True) -> float:
    """Validate a numeric option; the error names the option and the value it got."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if ok and (math.isnan(number) or (finite and math.isinf(number))):
        ok = False
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number <= high
    if not ok:
        if low is not None and high is not None:
            rule = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            rule = f"{'>' if low_open else '>='} {low:g}"
        else:
            rule = "a finite number" if finite else "a number"
        raise SourceError(f"{option} must be {rule}, got {value!r}", source=source)
    return number


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
        try:
            frame = pd.read_parquet(path) if path.name.endswith(".parquet") else pd.read_csv(path)
        except FileNotFoundError as exc:
            raise SourceError(f"replay file {path}: no such file", source=self.name) from exc
        except (OSError, ValueError, UnicodeDecodeError, ImportError) as exc:
            raise SourceError(f"replay file {path} cannot be read: {exc}", source=self.name) from exc
        if TIMESTAMP not in frame.columns:
            raise SourceError(f"replay file {path} has no {TIMESTAMP!r} column "
                              f"(columns: {list(frame.columns)})", source=self.name)
        if frame.empty:
            raise SourceError(f"replay file {path} has no rows", source=self.name)
        missing = [m for m in self.metrics if m not in frame.columns]
        if missing:
            raise SourceError(f"replay file {path} lacks configured metric column(s) {missing}",
                              source=self.name)
        stamps = _parse(frame[TIMESTAMP])
        if stamps.isna().any():
            row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
            raise SourceError(f"replay file {path}: row {row + 1} has timestamp "
                              f"{frame[TIMESTAMP].iloc[row]!r}, which is not a time", source=self.name)
        own = DEVICE in frame.columns
        if own and device_id is not None:
            raise SourceError(f"replay file {path} has a {DEVICE} column; do not also give it "
                              "a device id", source=self.name)
        if own:
            ids = frame[DEVICE].astype("string").str.strip()
            blank = ids.isna() | (ids == "")
            if blank.any():
                row = int(np.flatnonzero(blank.to_numpy())[0])
                raise SourceError(f"replay file {path}: row {row + 1} has no {DEVICE}", source=self.name)
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


def _parse(values: pd.Series) -> pd.Series:
    """Timestamps as UTC; ISO text takes the fast path, anything else the validator's rules
    (numbers are epoch seconds, naive times are UTC)."""
    if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values)):
        try:
            return pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            pass
    return parse_timestamps(values)
