"""Validation: the one place that decides what happens to bad samples.

A sample is ``device_id``, a UTC ``timestamp``, one value per configured metric and an
optional ``label`` (0/1). Frames are pandas DataFrames with exactly those columns.

Every rule below either *repairs* the sample (and counts how, in ``repaired``) or
*rejects* it (keeps the original row with its reason in ``rejected``, and counts it).
Nothing disappears without a count. Keys of the per-metric counts are ``reason:metric``.

==========================  =========  ===================================================
condition                   outcome    rule
==========================  =========  ===================================================
missing/blank device_id     reject     ``missing_device_id``
unparsable timestamp        reject     ``bad_timestamp``; naive timestamps are taken as UTC
timestamp > now+max_future  reject     ``future_timestamp``
same device+timestamp       reject     ``duplicate`` (the first one in arrival order wins)
older than last accepted    reject     ``too_late`` if older by more than ``max_lateness_s``
  ... within lateness       repair     ``late``: stored; its counter metrics set missing
                                       (``late_counter:m``) as that interval's rate is
                                       already accounted for
out of order in a batch     repair     ``reordered``: sorted by time before rates are taken
value missing               repair     ``metric_missing:m``: stored as missing (NULL)
value not a number          repair     ``metric_non_numeric:m``: set missing
value +/-inf                repair     ``metric_inf:m``: set missing
value negative              repair     ``metric_negative:m``: set missing (no metric here
                                       is signed; latency, bytes and packets are >= 0)
value above its bound       repair     ``metric_absurd:m``: set missing. The bound is
                                       ``config.metric_limit(m)``; for counters it bounds
                                       the rate, and a raw value >= 2**counter_bits is
                                       absurd too
every metric invalid        reject     ``no_valid_metrics``
bad label (not 0/1)         repair     ``bad_label``: label set missing
silence > gap_s             repair     ``gap`` (once per gap): counter rates across the gap
                                       are set missing (``counter_gap:m``) because an
                                       average over a long silence hides bursts
counter's first sample      repair     ``counter_baseline:m``: becomes the baseline, rate
                                       missing
counter decreased, and      repair     ``counter_wrap:m``: delta = value + 2**bits - prev
  wrapping explains it                 (plausible when that rate <= the metric's bound;
                                       rrdtool's rule)
counter decreased otherwise repair     ``counter_reset:m``: the device restarted counting
                                       from 0, so delta = value (Prometheus' rule)
source says discontinuity   repair     ``counter_discontinuity:m``: the device's first
  (SNMP agent restarted)               sample after it becomes the new baseline, rate
                                       missing: after an agent restart the counters may or
                                       may not have restarted from 0 (RFC 2863's
                                       ifCounterDiscontinuityTime), so no delta is trusted
==========================  =========  ===================================================

The counter width is ``config.counter_bits`` unless the source says per device (an SNMP
agent without 64-bit ``ifHC*`` counters is polled on its 32-bit ones).

Counter metrics leave the validator as per-second rates; gauges pass through.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import (
    DEVICE,
    LABEL,
    TIMESTAMP,
    frame_from_records,
    from_ms,
    parse_timestamps,
    to_ms,
)


@dataclass
class DeviceState:
    """What the validator remembers of one device between batches."""

    last_ts_ms: int | None = None
    counter_raw: dict[str, float] = field(default_factory=dict)
    counter_ts_ms: dict[str, int] = field(default_factory=dict)


@dataclass
class ValidationResult:
    accepted: pd.DataFrame
    rejected: pd.DataFrame
    repaired_counts: Counter[str]
    rejected_counts: Counter[str]
    ignored_columns: list[str]

    @property
    def n_accepted(self) -> int:
        return len(self.accepted)

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)


class TelemetryValidator:
    """Applies the module's rules to batches of samples, remembering each device's state.

    Stateful on purpose: counter rates, duplicates and lateness span batches. A collector
    keeps one validator per set of devices; ``device_state`` / ``restore`` let a restarted
    collector carry on from what the store holds.
    """

    def __init__(self, config: EyeNetConfig, now_s: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = list(config.metrics)
        self.counters = list(config.counter_metrics)
        self._now_s = now_s
        self._state: dict[str, DeviceState] = {}

    def device_state(self, device_id: str) -> DeviceState | None:
        return self._state.get(device_id)

    def restore(self, device_id: str, state: DeviceState) -> None:
        self._state[device_id] = state

    def validate(self, samples: Iterable[Mapping[str, Any]] | pd.DataFrame,
                 counter_bits: Mapping[str, int] | None = None,
                 discontinuous: Collection[str] = ()) -> ValidationResult:
        """``counter_bits``: counter width per device where the source knows it;
        ``discontinuous``: devices whose counters the source says restarted before these
        samples (see the module's table)."""
        original = samples if isinstance(samples, pd.DataFrame) else None
        raw = frame_from_records(samples, self.metrics)
        ignored = [] if original is None else [
            c for c in original.columns if c not in (DEVICE, TIMESTAMP, LABEL, *self.metrics)]
        repaired: Counter[str] = Counter()
        reasons = pd.Series(None, index=raw.index, dtype="object")

        device = raw[DEVICE].astype("string").str.strip()
        reasons[device.isna() | (device == "")] = "missing_device_id"
        ts = parse_timestamps(raw[TIMESTAMP])
        reasons[reasons.isna() & ts.isna()] = "bad_timestamp"
        ts_ms = pd.Series(np.zeros(len(raw), dtype="int64"), index=raw.index)
        ok_ts = ts.notna()
        ts_ms[ok_ts] = to_ms(ts[ok_ts])
        future_ms = int((self._now_s() + self.config.max_future_s) * 1000)
        reasons[reasons.isna() & (ts_ms > future_ms)] = "future_timestamp"

        values, why_missing, all_invalid = self._clean_values(raw)
        reasons[reasons.isna() & all_invalid] = "no_valid_metrics"
        label, bad_label = self._clean_label(raw[LABEL])

        dup = pd.DataFrame({"d": device, "t": ts_ms})[reasons.isna()].duplicated(keep="first")
        reasons[dup[dup].index] = "duplicate"
        late = self._lateness(device, ts_ms, reasons, repaired)

        live = reasons.isna()
        # Repairs are counted on the samples that are kept; a rejected sample counts once,
        # under its reject reason.
        for reason, mask in [*why_missing.items(), ("bad_label", bad_label)]:
            n = int((mask & live).sum())
            if n:
                repaired[reason] += n
        frame = pd.DataFrame({DEVICE: device[live].astype(str), "_ts_ms": ts_ms[live],
                              "_late": late[live]})
        frame = pd.concat([frame, values[live], label[live]], axis=1)
        order_before = frame.index.to_numpy()
        frame = frame.sort_values([DEVICE, "_ts_ms"], kind="stable")
        self._count_reordered(frame, order_before, repaired)
        restarted = {d for d in discontinuous if d in self._state and self._state[d].counter_raw}
        for device_id in restarted:  # no delta across the discontinuity: the next value is a baseline
            self._state[device_id].counter_raw.clear()
            self._state[device_id].counter_ts_ms.clear()
        self._counter_rates(frame, repaired, counter_bits or {}, restarted)
        self._remember(frame)

        rejected = raw[reasons.notna()].copy()
        rejected["reason"] = reasons[reasons.notna()]
        accepted = frame.assign(**{TIMESTAMP: from_ms(frame["_ts_ms"])})
        accepted = accepted[[DEVICE, TIMESTAMP, *self.metrics, LABEL]].reset_index(drop=True)
        return ValidationResult(accepted, rejected, repaired,
                                Counter(rejected["reason"].tolist()), ignored)

    # -- rule helpers -------------------------------------------------------------------

    def _clean_values(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.Series], pd.Series]:
        """Metric values as float with invalid ones set missing, the masks of why, and
        the rows where no metric at all was valid."""
        out, why = {}, {}
        any_valid = pd.Series(False, index=raw.index)
        for m in self.metrics:
            col = raw[m]
            num = pd.to_numeric(col, errors="coerce").astype("float64")
            missing = col.isna()
            non_numeric = num.isna() & ~missing
            inf = pd.Series(np.isinf(num), index=raw.index)
            negative = num < 0
            # Counters are bounded raw by their width; their rate is checked later.
            limit = (2.0 ** self.config.counter_bits - 1 if m in self.counters
                     else self.config.metric_limit(m))
            absurd = (num > limit) & ~inf
            for reason, mask in (("metric_missing", missing), ("metric_non_numeric", non_numeric),
                                 ("metric_inf", inf), ("metric_negative", negative),
                                 ("metric_absurd", absurd)):
                why[f"{reason}:{m}"] = mask
            bad = missing | non_numeric | inf | negative | absurd
            out[m] = num.mask(bad)
            any_valid |= ~bad
        return pd.DataFrame(out, index=raw.index), why, ~any_valid

    def _clean_label(self, label: pd.Series) -> tuple[pd.Series, pd.Series]:
        num = pd.to_numeric(label, errors="coerce")
        bad = label.notna() & ~num.isin([0, 1])
        return num.mask(bad).astype("Int8").rename(LABEL), bad

    def _count_reordered(self, frame: pd.DataFrame, order_before: np.ndarray,
                         repaired: Counter[str]) -> None:
        # A sample is reordered when it arrived after a later sample of the same device.
        by_arrival = frame.loc[order_before]
        prev_ts = by_arrival.groupby(DEVICE, sort=False)["_ts_ms"].cummax().groupby(
            by_arrival[DEVICE], sort=False).shift(1)
        n = int((by_arrival["_ts_ms"] < prev_ts).sum())
        if n:
            repaired["reordered"] += n

    def _lateness(self, device: pd.Series, ts_ms: pd.Series, reasons: pd.Series,
                  repaired: Counter[str]) -> pd.Series:
        """Mark repeats of / too-old samples against earlier batches; return the late mask."""
        last = device.map({d: s.last_ts_ms for d, s in self._state.items()
                           if s.last_ts_ms is not None}).astype("float64")
        live = reasons.isna()
        reasons[live & (ts_ms == last)] = "duplicate"
        older = live & (ts_ms < last)
        too_late = older & ((last - ts_ms) > self.config.max_lateness_s * 1000)
        reasons[too_late] = "too_late"
        late = older & ~too_late
        if late.any():
            repaired["late"] += int(late.sum())
        return late

    def _counter_rates(self, frame: pd.DataFrame, repaired: Counter[str], counter_bits: Mapping[str, int],
                       restarted: set[str]) -> None:
        """Replace raw counters by per-second rates in place (frame sorted by device, time).

        Late samples sit outside the rate chain: their interval was already accounted for.
        """
        chain = frame[~frame["_late"]]
        dev = chain[DEVICE]
        # integer group keys: grouping by the string column re-hashes it on every call
        group = pd.factorize(dev)[0]
        ts = chain["_ts_ms"].astype("float64")
        prev_row_ts = ts.groupby(group, sort=False).shift(1)
        prev_row_ts = prev_row_ts.fillna(dev.map(
            {d: s.last_ts_ms for d, s in self._state.items() if s.last_ts_ms is not None}))
        gap_ms = self.config.gap_s * 1000
        n_gaps = int(((ts - prev_row_ts) > gap_ms).sum())
        if n_gaps:
            repaired["gap"] += n_gaps

        wrap: float | pd.Series = 2.0 ** self.config.counter_bits
        if counter_bits:
            wrap = 2.0 ** dev.map(counter_bits).fillna(self.config.counter_bits).astype("float64")
        after_restart = dev.isin(restarted) if restarted else pd.Series(False, index=dev.index)
        for m in self.counters:
            max_rate = self.config.metric_limit(m)
            late_values = frame["_late"] & frame[m].notna()
            if late_values.any():
                repaired[f"late_counter:{m}"] += int(late_values.sum())
                frame.loc[late_values, m] = np.nan
            raw = chain[m]
            valid_ts = ts.where(raw.notna())
            prev = raw.groupby(group, sort=False).ffill().groupby(group, sort=False).shift(1)
            prev_ts = valid_ts.groupby(group, sort=False).ffill().groupby(group, sort=False).shift(1)
            need = prev.isna()
            if need.any():
                prev[need] = dev[need].map(
                    {d: s.counter_raw[m] for d, s in self._state.items() if m in s.counter_raw})
                prev_ts[need] = dev[need].map(
                    {d: s.counter_ts_ms[m] for d, s in self._state.items() if m in s.counter_ts_ms})
            dt_s = (ts - prev_ts) / 1000.0
            delta = raw - prev
            decreased = delta < 0
            wrapped_rate = (raw + wrap - prev) / dt_s
            is_wrap = decreased & (wrapped_rate <= max_rate)
            is_reset = decreased & ~is_wrap
            rate = (delta / dt_s).where(~decreased, wrapped_rate.where(is_wrap, raw / dt_s))
            has = raw.notna()
            baseline = has & prev.isna()
            gap = has & ~baseline & ((ts - prev_ts) > gap_ms)
            absurd = has & ~baseline & ~gap & (rate > max_rate)
            for reason, mask in (("counter_baseline", baseline & ~after_restart),
                                 ("counter_discontinuity", baseline & after_restart),
                                 ("counter_gap", gap),
                                 ("counter_wrap", is_wrap & ~gap), ("counter_reset", is_reset & ~gap),
                                 ("metric_absurd", absurd)):
                n = int(mask.sum())
                if n:
                    repaired[f"{reason}:{m}"] += n
            frame.loc[chain.index, m] = rate.mask(baseline | gap | absurd)
            self._remember_counter(m, dev, raw, valid_ts)

    def _remember_counter(self, metric: str, dev: pd.Series, raw: pd.Series,
                          valid_ts: pd.Series) -> None:
        last = pd.DataFrame({"raw": raw, "ts": valid_ts}).groupby(dev, sort=False).last().dropna()
        # plain Python values: a per-device loop over pandas scalars costs more than the rates
        for device_id, value, ts in zip(last.index.tolist(), last["raw"].tolist(), last["ts"].tolist(),
                                        strict=True):
            state = self._state.setdefault(device_id, DeviceState())
            state.counter_raw[metric] = float(value)
            state.counter_ts_ms[metric] = int(ts)

    def _remember(self, frame: pd.DataFrame) -> None:
        for device_id, ts_max in frame.groupby(DEVICE, sort=False)["_ts_ms"].max().items():
            state = self._state.setdefault(device_id, DeviceState())
            if state.last_ts_ms is None or ts_max > state.last_ts_ms:
                state.last_ts_ms = int(ts_max)


def validate_history(frame: pd.DataFrame, config: EyeNetConfig, source: str) -> ValidationResult:
    """A recorded history through the ingest rules, as if it had streamed in: a model trained
    on a file sees exactly what serving would have stored (no training/serving skew).

    A history with no acceptable sample is an error naming ``source`` and the reasons."""
    result = TelemetryValidator(config).validate(frame)
    if result.accepted.empty:
        reasons = ", ".join(f"{k} {v}" for k, v in result.rejected_counts.most_common())
        raise TelemetryError(f"{source}: no sample passes validation ({reasons})")
    return result
