"""Telemetry sources: the one interface collectors poll.

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

*Live* sources (SNMP agents, a node_exporter scrape) can only read the present: a fetch
whose range ends now returns one reading per device stamped at ``until_ms``, and a range
wholly in the past returns nothing. A restarted collector cannot recover a reading it
never stored, but what it stored stays exactly-once and its counter baselines (saved with
the cursors) carry the rates on. A Prometheus range query is deterministic again.

A failure of the whole source raises :class:`SourceError`; one device failing lands in
``FetchResult.failed`` so that the other devices still make progress.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eyenet.errors import SourceError
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP

SOURCE_KINDS = ("simulated", "replay", "devices")


@dataclass
class FetchResult:
    """What one fetch delivered.

    ``samples`` has ``device_id``, ``timestamp`` (tz-aware UTC, or garbage objects when the
    source injects bad input), one column per configured metric and optionally ``label``.
    ``failed`` maps device_id -> error message for devices whose read failed this time.
    """

    samples: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)
    # what a live source knows of a device's counters: their width where it is not the
    # config's (an SNMP agent polled on 32-bit counters), and devices whose counters
    # restarted before these samples (the agent's uptime went back)
    counter_bits: dict[str, int] = field(default_factory=dict)
    discontinuous: set[str] = field(default_factory=set)


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
