"""A simulated fleet of network devices, with injectable incidents and bad input.

Why it is built this way:

* **Random access.** Every value is a pure function of (seed, device, tick). Per-tick noise
  comes from a counter-based hash (splitmix64 over seed, device, tick, purpose), not from a
  sequential RNG, so ``fetch(a, b)`` equals ``fetch(a, m)`` followed by ``fetch(m, b)``
  and a restarted collector that re-fetches a span regenerates the same samples.
* **Counters are integrals.** A traffic counter is the closed-form integral of its rate
  ``base * (1 + a*sin(2*pi*t/day + phase))`` plus incident terms, plus a bounded noise term
  small enough to keep it monotonic. Incident terms are rounded to whole units, so their
  sums are exact in float64 whatever order they are added in. Random incidents are drawn
  per device-day from a hash (from ``RANDOM_ORIGIN_MS`` on); what the days before a fetch
  added to the counters is summed per day and memoised every ``CHECKPOINT_DAYS``.
* **Ground truth.** Incidents (explicit, or random at ``incident_rate_per_device_day``)
  come back from ``incidents_between`` and as the ``label`` column; the bad input injected
  at ``garbage_rate`` is counted by ``garbage_between`` under the validator's reason names.

Time: samples sit on the grid ``ts = k * interval_ms``, and a sample reports the interval
that ends at its timestamp, so an incident ``[start_ms, end_ms]`` (snapped outward to the
grid) shows in the samples with ``start_ms < ts <= end_ms``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError
from eyenet.sources.base import FetchResult, Source, check_number, empty_samples
from eyenet.sources.incidents import (
    DAY_MS,
    LINK_DOWN,
    MAX_INCIDENT_RATE,
    SPIKE,
    STUCK,
    TRAFFIC,
    Incident,
    IncidentArrays,
    IncidentModel,
    expand_spans,
    hash_key,
    hash_with,
    is_int,
    mix_hash,
    unit_float,
)
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP

MAX_FETCH_POINTS = 1_000_000  # devices x ticks generated at once; longer fetches are chunked
GARBAGE = ("metric_missing", "metric_non_numeric", "metric_negative", "future_timestamp", "duplicate")
_NO_VANISH = np.iinfo(np.int64).max


def _sym(h: np.ndarray) -> np.ndarray:
    return 2.0 * unit_float(h) - 1.0


def _gauss(h: np.ndarray) -> np.ndarray:
    """Box-Muller on the two halves of a hash, clipped to +-3 so values stay positive."""
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0 ** -32
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0 ** -32
    return np.clip(np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2), -3.0, 3.0)


SALT = {name: np.uint64(hash_key(name)) for name in
        ("noise:in", "noise:out", "noise:packets_in", "noise:packets_out", "noise:latency",
         "garbage", "fail", "random")}


class SimulatedSource(IncidentModel, Source):
    """A fleet with daily cycles, correlated metrics, incidents and bad input (see module)."""

    name = "simulated"

    def __init__(self, config: EyeNetConfig, devices: int | Sequence[str] = 10, seed: int = 0,
                 speed: float = 1.0, origin_wall_s: float | None = None, start_ms: int | None = None,
                 incidents: Sequence[Incident | Mapping[str, Any]] | None = None,
                 incident_rate_per_device_day: float = 0.0, garbage_rate: float = 0.0,
                 fail_rate: float = 0.0, vanish: Mapping[str, int] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.metrics = config, list(config.metrics)
        self._counters = set(config.counter_metrics)
        self.interval_s = float(config.sample_interval_s)
        self._ims = round(self.interval_s * 1000)
        if self._ims < 1 or abs(self._ims - self.interval_s * 1000) > 1e-6:
            self._fail(f"sample_interval_s must be whole milliseconds, got {self.interval_s!r}")
        self._devices = self._device_names(devices)
        self._index = {d: i for i, d in enumerate(self._devices)}
        if not is_int(seed):
            self._fail(f"seed must be an integer, got {seed!r}")
        self._speed = check_number(self.name, "speed", speed, 0.0, low_open=True)
        self._clock = clock
        self._origin_s = clock() if origin_wall_s is None else check_number(
            self.name, "origin_wall_s", origin_wall_s)
        if start_ms is not None and not is_int(start_ms):
            self._fail(f"start_ms must be an integer (epoch ms), got {start_ms!r}")
        self._start_ms = (int(start_ms) if start_ms is not None
                          else int(self._origin_s * 1000) // self._ims * self._ims)
        self._rate = check_number(self.name, "incident_rate_per_device_day", incident_rate_per_device_day,
                                  0.0, MAX_INCIDENT_RATE)
        self._garbage_rate = check_number(self.name, "garbage_rate", garbage_rate, 0.0, 1.0)
        self._fail_rate = check_number(self.name, "fail_rate", fail_rate, 0.0, 1.0)
        self._slots = max(4, math.ceil(4 * self._rate))
        self._slot_ms = DAY_MS // self._slots
        if self._rate and self._slot_ms < 900_000 + 2 * self._ims:
            self._fail(f"incident_rate_per_device_day={self._rate:g} with sample_interval_s="
                       f"{self.interval_s:g} leaves no room for 15-minute incidents; lower either")
        self._vanish_ms = np.full(len(self._devices), _NO_VANISH, np.int64)
        if not isinstance(vanish, Mapping | None):
            self._fail(f"vanish must map device_id -> epoch ms, got {vanish!r}")
        for device, at in (vanish or {}).items():
            if device not in self._index or not is_int(at):
                self._fail(f"vanish must map known device ids to epoch ms, got {device!r}: {at!r}")
            self._vanish_ms[self._index[device]] = at
        self._setup_fleet(int(seed))
        self._setup_incidents(incidents)

    def _fail(self, message: str, device_id: str | None = None) -> None:
        raise SourceError(message, source=self.name, device_id=device_id)

    def _device_names(self, devices: Any) -> list[str]:
        if is_int(devices):
            if devices < 1:
                self._fail(f"devices must be >= 1, got {devices}")
            return [f"dev-{i:04d}" for i in range(int(devices))]
        names = list(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else None
        if not names or not all(isinstance(d, str) and d.strip() for d in names) or len(set(names)) < len(
                names):
            self._fail(f"devices must be a count >= 1 or a list of unique non-empty ids, got {devices!r}")
        return names  # type: ignore[return-value]

    def _setup_fleet(self, seed: int) -> None:
        """Per-device parameters, each a pure function of (seed, device id)."""
        keys = np.array([hash_key(d) for d in self._devices], np.uint64)
        self._dseed = hash_with(mix_hash(np.uint64(seed % 2**64)), keys)
        self._rseed = hash_with(self._dseed, SALT["random"])

        def draw(name: str) -> np.ndarray:
            return unit_float(hash_with(self._dseed, np.uint64(hash_key(name))))

        self._b_in = 10.0 ** (5.0 + 3.0 * draw("bytes_in"))  # 1e5..1e8 B/s
        self._b_out = self._b_in * (0.3 + 0.9 * draw("out_ratio"))
        self._pkt = 300.0 + 1100.0 * draw("packet_size")
        self._amp = 0.2 + 0.4 * draw("amplitude")
        self._phase = 2.0 * np.pi * draw("phase")
        self._noise_lvl = 0.01 + 0.07 * draw("noise")
        self._lat0 = 1.0 + 49.0 * draw("latency")
        self._roles = [m if m in TRAFFIC else "counter" if m in self._counters else
                       "latency" if m == "latency" else "gauge" for m in self.metrics]
        self._integrated = [j for j, r in enumerate(self._roles) if r in (*TRAFFIC, "counter")]
        self._col = {j: c for c, j in enumerate(self._integrated)}
        base = {"bytes_in": self._b_in, "bytes_out": self._b_out, "packets_in": self._b_in / self._pkt,
                "packets_out": self._b_out / self._pkt}
        self._scale = {j: base.get(r, 10.0 ** (2.0 + 4.0 * draw("scale:" + self.metrics[j])))
                       for j, r in enumerate(self._roles) if j in self._col}
        self._level = {j: 10.0 ** (3.0 * draw("level:" + self.metrics[j]))
                       for j, r in enumerate(self._roles) if r == "gauge"}
        self._salt = {j: np.uint64(hash_key("noise:" + m)) for j, m in enumerate(self.metrics)}
        self._setup_kinds()
        self._counter_idx = np.array([j for j, m in enumerate(self.metrics) if m in self._counters], np.int64)

    # -- values -------------------------------------------------------------------------

    def _cycle(self, d: Any, t_ms: Any) -> np.ndarray:
        return (2.0 * np.pi / DAY_MS) * (t_ms % DAY_MS) + self._phase[d]

    def _J(self, d: Any, t_ms: Any) -> np.ndarray:
        """Seconds of mean-rate traffic up to t: the integral of 1 + a*sin(cycle)."""
        return t_ms / 1000.0 + self._amp[d] * (DAY_MS / 2000.0 / np.pi) * (1.0 - np.cos(self._cycle(d, t_ms)))

    def _noise(self, j: int, d: Any, hk: np.ndarray | None) -> np.ndarray:
        """Bounded noise of integrated metric j (hk None: its bound). The bound keeps each
        counter monotonic: under 0.5 of the smallest smooth increase of one interval."""
        role, step_s = self._roles[j], self.interval_s

        def sym(salt: np.uint64) -> Any:
            return 1.0 if hk is None else _sym(hash_with(hk, salt))

        level = self._noise_lvl[d] * step_s
        if role == "counter":
            return level * self._scale[j][d] * sym(self._salt[j])
        u_in = sym(SALT["noise:in"])
        base, u = ((self._b_in[d], u_in) if role.endswith("_in")
                   else (self._b_out[d], 0.6 * u_in + 0.4 * sym(SALT["noise:out"])))
        eps = level * base * u
        if role.startswith("packets"):
            own = 0.05 * base * (1.0 - self._amp[d]) * step_s * sym(SALT["noise:" + role])
            eps = (eps + own) / self._pkt[d]
        return eps

    def _value(self, j: int, d: Any, J: np.ndarray, C: np.ndarray, hk: np.ndarray | None) -> np.ndarray:
        Y = self._scale[j][d] * J + C
        return Y if hk is None else Y + self._noise(j, d, hk)

    def _integrate(self, rows: np.ndarray, ticks: np.ndarray, inc: IncidentArrays,
                    hk: np.ndarray | None) -> dict[int, np.ndarray]:
        """Reset-free counter values (devices x ticks) of the integrated metrics; without
        ``hk`` the smooth part only."""
        D, T = len(rows), len(ticks)
        t_ms = ticks * self._ims
        total, _ = self._carry(int(t_ms[0]) // DAY_MS)
        J = self._J(rows[:, None], t_ms[None, :])
        pos = np.full(len(self._devices), -1)
        pos[rows] = np.arange(D)
        r = pos[inc.dev]
        lo, hi = np.searchsorted(t_ms, inc.s, "right"), np.searchsorted(t_ms, inc.e, "right")
        out = {}
        for col, j in enumerate(self._integrated):
            acts = np.flatnonzero(self._contributes(inc, j))
            diff = np.zeros((D, T + 1))
            np.add.at(diff, (r[acts], hi[acts]), self._contrib(j, inc[acts], inc.e[acts]))
            C = np.cumsum(diff, axis=1)[:, :T] + total[rows, col][:, None]
            which, k = expand_spans(lo, hi, self._contributes(inc, j) & (inc.kind != LINK_DOWN))
            np.add.at(C, (r[which], k), self._contrib(j, inc[which], t_ms[k]))
            V = self._value(j, rows[:, None], J, C, hk)
            which, k = expand_spans(lo, hi, inc.drives[:, j] & (inc.kind == LINK_DOWN))
            if len(k):  # a link that is down freezes its counters at their value at the start
                d, s = inc.dev[which], inc.s[which]
                noise = None if hk is None else hash_with(self._dseed[d], s // self._ims)
                V[r[which], k] = self._value(j, d, self._J(d, s), C[r[which], k], noise)
            out[j] = V
        return out

    def _latency(self, d: Any, t_ms: Any, hk: np.ndarray) -> np.ndarray:
        util = (1.0 + self._amp[d] * np.sin(self._cycle(d, t_ms))) / (1.0 + self._amp[d])
        noise = self._noise_lvl[d] * _gauss(hash_with(hk, SALT["noise:latency"]))
        return self._lat0[d] * (1.0 + 1.5 * util) * (1.0 + noise)

    def _levels(self, rows: np.ndarray, ticks: np.ndarray, inc: IncidentArrays,
                hk: np.ndarray) -> dict[int, np.ndarray]:
        """Gauges: latency (rising with utilisation, with its incidents) and generic ones."""
        t_ms, d = ticks * self._ims, rows[:, None]
        pos = np.full(len(self._devices), -1)
        pos[rows] = np.arange(len(rows))
        lo, hi = np.searchsorted(t_ms, inc.s, "right"), np.searchsorted(t_ms, inc.e, "right")
        out = {}
        for j, role in enumerate(self._roles):
            if role == "gauge":
                out[j] = self._level[j][d] * (1.0 + self._amp[d] * np.sin(self._cycle(d, t_ms) + 1.0)) * (
                    1.0 + self._noise_lvl[d] * _gauss(hash_with(hk, self._salt[j])))
            elif role == "latency":
                v = self._latency(d, t_ms, hk)
                for kind in (SPIKE, STUCK, LINK_DOWN):
                    which, k = expand_spans(lo, hi, inc.drives[:, j] & (inc.kind == kind))
                    at = (pos[inc.dev[which]], k)
                    if kind == SPIKE:
                        v[at] *= inc.mag[which]
                    elif kind == STUCK:
                        dv, s_tick = inc.dev[which], inc.s[which] // self._ims
                        v[at] = self._latency(dv, s_tick * self._ims, hash_with(self._dseed[dv], s_tick))
                    else:
                        v[at] = np.nan
                out[j] = v
        return out

    def _columns(self, rows: np.ndarray, ticks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw metric values and labels (devices x ticks). One tick before the range is
        generated too, for the rates of traffic metrics configured as gauges."""
        ext = np.concatenate([ticks[:1] - 1, ticks])
        t_ms = ext * self._ims
        inc = self._incidents_for(rows, int(t_ms[0]), int(t_ms[-1]))
        hk = hash_with(self._dseed[rows][:, None], ext[None, :])
        V = self._integrate(rows, ext, inc, hk)
        self._apply_resets(rows, ext, V, inc)
        levels = self._levels(rows, ext, inc, hk)
        cols = {}
        for j, m in enumerate(self.metrics):
            if j in levels:
                cols[m] = levels[j][:, 1:]
            elif m in self._counters:
                cols[m] = np.mod(np.floor(V[j][:, 1:]), 2.0 ** self.config.counter_bits)
            else:
                cols[m] = np.diff(V[j], axis=1) / self.interval_s
        return cols, self._labels(rows, t_ms, inc)[:, 1:]

    # -- bad input ----------------------------------------------------------------------

    def _failing(self, rows: np.ndarray, since_ms: int, until_ms: int) -> np.ndarray:
        """Failed reads, by hash of (seed, device, since_ms, until_ms): the same call fails
        the same way, and a retry that asks for more (a later until_ms) draws again."""
        if not self._fail_rate:
            return np.zeros(len(rows), bool)
        h = hash_with(hash_with(self._dseed[rows], np.int64(since_ms)), np.int64(until_ms))
        return unit_float(hash_with(h, SALT["fail"])) < self._fail_rate

    def _garbage(self, dev: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(defective?, defect index into GARBAGE, metric index) per sample."""
        h = hash_with(hash_with(self._dseed[dev], k), SALT["garbage"])
        hit = unit_float(h) < self._garbage_rate
        h2 = mix_hash(h)
        kind = ((h2 >> np.uint64(40)) % np.uint64(len(GARBAGE))).astype(np.int64)
        pick = (h2 & np.uint64(0xFFFF)).astype(np.int64)
        metric = pick % len(self.metrics)
        if len(self._counter_idx):  # a negative value is most telling on a counter
            metric = np.where(kind == 2, self._counter_idx[pick % len(self._counter_idx)], metric)
        return hit, kind, metric

    def _rows(self, device_ids: Sequence[str], since_ms: int,
              until_ms: int) -> tuple[np.ndarray, dict[str, str]]:
        failed = {d: f"simulated fleet has no device {d!r}" for d in device_ids if d not in self._index}
        rows = np.array([self._index[d] for d in dict.fromkeys(device_ids) if d in self._index], np.int64)
        bad = self._failing(rows, since_ms, until_ms)
        failed.update({self._devices[i]: f"simulated read failure (fail_rate={self._fail_rate:g})"
                       for i in rows[bad]})
        return rows[~bad], failed

    def _spans(self, rows: np.ndarray, since_ms: int, until_ms: int) -> list[np.ndarray]:
        k0, k1 = int(since_ms) // self._ims + 1, min(int(until_ms), self.now_ms()) // self._ims
        if not len(rows) or k1 < k0:
            return []
        step = max(1, MAX_FETCH_POINTS // len(rows))
        return [np.arange(k, min(k + step, k1 + 1), dtype=np.int64) for k in range(k0, k1 + 1, step)]

    # -- the Source interface -----------------------------------------------------------

    def devices(self) -> list[str]:
        return list(self._devices)

    def now_ms(self) -> int:
        return int(self._start_ms + (self._clock() - self._origin_s) * 1000.0 * self._speed)

    def fetch(self, device_ids: Sequence[str], since_ms: int, until_ms: int) -> FetchResult:
        rows, failed = self._rows(device_ids, since_ms, until_ms)
        frames = [self._frame(rows, ticks) for ticks in self._spans(rows, since_ms, until_ms)]
        if not frames:
            return FetchResult(empty_samples(self.metrics), failed)
        return FetchResult(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True), failed)

    def _frame(self, rows: np.ndarray, ticks: np.ndarray) -> pd.DataFrame:
        """Samples in time order (all devices of a tick, then the next tick), with garbage."""
        cols, label = self._columns(rows, ticks)
        dev, k = np.tile(rows, len(ticks)), np.repeat(ticks, len(rows))
        keep = k * self._ims <= self._vanish_ms[dev]
        flat: dict[str, np.ndarray] = {m: c.T.ravel()[keep] for m, c in cols.items()}
        dev, k, lab = dev[keep], k[keep], label.T.ravel()[keep]
        ts = k * self._ims
        repeat = None
        if self._garbage_rate:
            hit, kind, metric = self._garbage(dev, k)
            ts = np.where(hit & (kind == 3), ts + DAY_MS, ts)
            for j, m in enumerate(self.metrics):
                mine = hit & (metric == j)
                col = flat[m]
                col[mine & (kind == 0)] = np.nan
                neg = mine & (kind == 2)
                col[neg] = -(np.nan_to_num(np.abs(col[neg])) + 1.0)
                if (mine & (kind == 1)).any():
                    col = col.astype(object)
                    col[mine & (kind == 1)] = "n/a"
                flat[m] = col
            repeat = 1 + (hit & (kind == 4))
        frame = pd.DataFrame({DEVICE: np.array(self._devices, dtype=object)[dev],
                              TIMESTAMP: pd.to_datetime(ts, unit="ms", utc=True), **flat, LABEL: lab})
        if repeat is not None and (repeat > 1).any():
            frame = frame.iloc[np.repeat(np.arange(len(frame)), repeat)].reset_index(drop=True)
        return frame

    def garbage_between(self, since_ms: int, until_ms: int,
                        device_ids: Sequence[str] | None = None) -> Counter[str]:
        """Defects ``fetch(device_ids, since_ms, until_ms)`` injects, keyed like the
        validator's reasons (``metric_missing:bytes_in``, ``duplicate``, ...)."""
        rows, _ = self._rows(self._devices if device_ids is None else device_ids, since_ms, until_ms)
        counts: Counter[str] = Counter()
        for ticks in self._spans(rows, since_ms, until_ms) if self._garbage_rate else []:
            dev, k = np.tile(rows, len(ticks)), np.repeat(ticks, len(rows))
            keep = k * self._ims <= self._vanish_ms[dev]
            hit, kind, metric = self._garbage(dev[keep], k[keep])
            codes, n = np.unique(kind[hit] * len(self.metrics) + metric[hit], return_counts=True)
            for code, c in zip(codes.tolist(), n.tolist(), strict=True):
                kind_i, j = divmod(code, len(self.metrics))
                if kind_i >= 3:
                    counts[GARBAGE[kind_i]] += c
                else:  # with a single metric, a bad value leaves no valid metric at all
                    counts["no_valid_metrics" if len(self.metrics) == 1 else
                           f"{GARBAGE[kind_i]}:{self.metrics[j]}"] += c
        return counts
