"""Incidents of the simulated fleet: the fault kinds, their validation, the random ones and
what they do to the counters, with the running totals of what each day added.

:class:`~eyenet.sources.simulator.SimulatedSource` gets its incident machinery from :class:`IncidentModel`,
a mixin that works on the fleet's own attributes (``eyenet.sources.simulator`` explains the design);
the public names here are re-exported from ``eyenet.sources.simulator``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from eyenet.sources.base import check_number

DAY_MS = 86_400_000
RANDOM_ORIGIN_MS = 1_577_836_800_000  # 2020-01-01T00:00Z: no random incidents before it
CHECKPOINT_DAYS = 32
MAX_INCIDENT_RATE = 16.0  # per device-day; random incidents get disjoint slots of a day
SMALL_PACKET_B = 64.0  # a DDoS floods small packets
KINDS = ("ddos_burst", "link_down", "latency_spike", "slow_exfiltration", "counter_reset",
         "sensor_stuck")
DDOS, LINK_DOWN, SPIKE, EXFIL, RESET, STUCK = range(len(KINDS))
DEFAULT_MAGNITUDE = {"ddos_burst": 20.0, "latency_spike": 10.0, "slow_exfiltration": 3.0}
TRAFFIC = ("bytes_in", "bytes_out", "packets_in", "packets_out")
# The roles of the metrics each kind drives ("counter": a generic counter metric).
KIND_ROLES = {"ddos_burst": ("bytes_in", "packets_in"), "link_down": (*TRAFFIC, "counter", "latency"),
              "latency_spike": ("latency",), "slow_exfiltration": ("bytes_out", "packets_out"),
              "sensor_stuck": ("latency",)}
_NO_RESET = np.iinfo(np.int64).min


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def hash_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def mix_hash(x: Any) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche on uint64, wrapping on purpose."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_with(h: Any, key: Any) -> np.ndarray:
    return mix_hash(np.asarray(h, dtype=np.uint64) ^ np.asarray(key).astype(np.uint64))


def unit_float(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclass
class Incident:
    """One injected fault and its ground truth.

    ``metrics`` are the metrics it drives (empty: every configured metric its kind drives)
    and ``magnitude`` its size (None or 0: the kind's default, ``DEFAULT_MAGNITUDE`` or 1).
    The source snaps the bounds outward to the sample grid (a counter_reset lasts one
    interval); ``incidents_between`` returns them resolved.
    """

    device_id: str
    kind: str
    start_ms: int
    end_ms: int
    metrics: list[str] = field(default_factory=list)
    magnitude: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Incident:
        return cls(**data)


@dataclass
class IncidentArrays:
    """Incidents as parallel arrays, the form the generators vectorise over."""

    dev: np.ndarray
    kind: np.ndarray
    s: np.ndarray
    e: np.ndarray
    mag: np.ndarray
    drives: np.ndarray  # (n, n_metrics) bool

    def __getitem__(self, sel: Any) -> IncidentArrays:
        return IncidentArrays(*(getattr(self, f.name)[sel] for f in fields(self)))

    def __len__(self) -> int:
        return len(self.dev)

    @staticmethod
    def concat(parts: list[IncidentArrays]) -> IncidentArrays:
        return IncidentArrays(*(np.concatenate([getattr(p, f.name) for p in parts])
                                for f in fields(IncidentArrays)))


def expand_spans(lo: np.ndarray, hi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(incident index, tick index) of every tick in [lo, hi) of the masked incidents."""
    idx = np.flatnonzero(mask & (hi > lo))
    n = hi[idx] - lo[idx]
    which = np.repeat(idx, n)
    return which, np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + lo[which]


class IncidentModel:
    """Explicit and random incidents of a fleet, their running totals and counter resets:
    a mixin of ``SimulatedSource``, which provides the attributes annotated below and the
    methods ``_fail``, ``_J``, ``_integrate`` and ``_noise``."""

    name: str
    metrics: list[str]
    _counters: set[str]
    _ims: int
    _devices: list[str]
    _index: dict[str, int]
    _rate: float
    _slots: int
    _slot_ms: int
    _rseed: np.ndarray
    _roles: list[str]
    _integrated: list[int]
    _col: dict[int, int]
    _scale: dict[int, np.ndarray]
    _b_in: np.ndarray
    _b_out: np.ndarray
    _pkt: np.ndarray

    def _setup_kinds(self) -> None:
        """Which configured metrics each kind drives, and the kinds drawn at random."""
        self._kind_metrics = {k: [m for m, r in zip(self.metrics, self._roles, strict=True)
                                  if (m in self._counters if k == "counter_reset" else r in KIND_ROLES[k])]
                              for k in KINDS}
        self._kind_drives = np.array([[m in self._kind_metrics[k] for m in self.metrics] for k in KINDS])
        self._random_kinds = np.array([i for i, k in enumerate(KINDS) if self._kind_metrics[k]], np.int64)
        self._default_mag = np.array([DEFAULT_MAGNITUDE.get(k, 1.0) for k in KINDS])

    def _setup_incidents(self, incidents: Sequence[Incident | Mapping[str, Any]] | None) -> None:
        """Validate the explicit incidents and start the running totals and caches."""
        self._explicit_list = [self._resolve(x) for x in incidents or []]
        self._check_overlaps()
        self._explicit = self._as_arrays(self._explicit_list)
        self._touched = np.array(sorted({self._index[x.device_id] * 2**32 + ep for x in self._explicit_list
                                         for ep in range(x.start_ms // DAY_MS, x.end_ms // DAY_MS + 1)}),
                                 np.int64)
        zero = (np.zeros((len(self._devices), len(self._integrated))),
                np.full(len(self._devices), _NO_RESET, np.int64))
        self._checkpoints = {RANDOM_ORIGIN_MS // DAY_MS: zero}
        self._carry_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._epoch_cache: dict[tuple[int, int], IncidentArrays] = {}
        self._y_cache: dict[tuple[int, int], np.ndarray] = {}

    def _resolve(self, item: Incident | Mapping[str, Any]) -> Incident:
        if isinstance(item, Mapping):
            try:
                item = Incident.from_dict(item)
            except TypeError as exc:
                self._fail(f"incidents: {exc}")
        if not isinstance(item, Incident):
            self._fail(f"incidents must hold Incident objects or dicts, got {item!r}")
        where = f"incident {item.kind!r} on {item.device_id!r}"
        if item.device_id not in self._index:
            self._fail(f"{where}: unknown device {item.device_id!r}", device_id=str(item.device_id))
        if item.kind not in KINDS:
            self._fail(f"{where}: unknown kind {item.kind!r}; kinds are {', '.join(KINDS)}")
        if not (is_int(item.start_ms) and is_int(item.end_ms)):
            self._fail(f"{where}: start_ms and end_ms must be integers, got {item.start_ms!r}, "
                       f"{item.end_ms!r}")
        if item.end_ms <= item.start_ms and item.kind != "counter_reset":
            self._fail(f"{where}: end_ms ({item.end_ms}) must be after start_ms ({item.start_ms})")
        allowed = self._kind_metrics[item.kind]
        chosen = list(item.metrics) or allowed
        if not chosen or any(m not in allowed for m in chosen):
            self._fail(f"{where}: metrics {chosen} are not among those the kind drives here {allowed}")
        magnitude = (DEFAULT_MAGNITUDE.get(item.kind, 1.0) if item.magnitude in (None, 0)
                     else check_number(self.name, "magnitude", item.magnitude, 0.0, low_open=True))
        start = int(item.start_ms) // self._ims * self._ims
        end = -(-int(item.end_ms) // self._ims) * self._ims
        if item.kind == "counter_reset":  # a single event: the interval it shows in
            end = start + self._ims
        return Incident(item.device_id, item.kind, start, end, chosen, magnitude)

    def _check_overlaps(self) -> None:
        """A link that is down freezes everything, so nothing else may overlap it."""
        for down in (x for x in self._explicit_list if x.kind == "link_down"):
            for other in self._explicit_list:
                if (other is not down and other.device_id == down.device_id
                        and other.start_ms < down.end_ms and down.start_ms < other.end_ms):
                    self._fail(f"incident link_down on {down.device_id!r} [{down.start_ms}, {down.end_ms}] "
                               f"overlaps {other.kind} [{other.start_ms}, {other.end_ms}]",
                               device_id=down.device_id)

    def _as_arrays(self, items: list[Incident]) -> IncidentArrays:
        return IncidentArrays(np.array([self._index[x.device_id] for x in items], np.int64),
                     np.array([KINDS.index(x.kind) for x in items], np.int64),
                     np.array([x.start_ms for x in items], np.int64),
                     np.array([x.end_ms for x in items], np.int64),
                     np.array([x.magnitude for x in items], np.float64),
                     np.array([[m in x.metrics for m in self.metrics] for x in items], bool).reshape(
                         -1, len(self.metrics)))

    def _random_block(self, e_lo: int, e_hi: int) -> IncidentArrays:
        """Random incidents of every device on days [e_lo, e_hi): at most one per slot of the
        day, drawn from a hash of (seed, device, day, slot); none on a device-day that has an
        explicit incident."""
        e_lo = max(e_lo, RANDOM_ORIGIN_MS // DAY_MS)
        if not self._rate or e_hi <= e_lo:
            return self._explicit[:0]
        days = np.arange(e_lo, e_hi, dtype=np.int64)
        h = hash_with(hash_with(self._rseed[:, None], days[None, :])[..., None],
                      np.arange(self._slots)[None, None, :])
        d, di, slot = np.nonzero(unit_float(h) < self._rate / self._slots)
        if len(self._touched):
            keep = ~np.isin(d * 2**32 + days[di], self._touched)
            d, di, slot = d[keep], di[keep], slot[keep]
        h2 = mix_hash(h[d, di, slot])
        pick = (h2 >> np.uint64(33)) % np.uint64(len(self._random_kinds))
        kind = self._random_kinds[pick.astype(np.int64)]
        dur_steps = np.round((120_000 + 780_000 * unit_float(hash_with(h2, 1))) / self._ims)
        dur = dur_steps.astype(np.int64) * self._ims
        dur = np.where(kind == RESET, self._ims, np.maximum(dur, self._ims))
        start = days[di] * DAY_MS + slot * self._slot_ms + (
            unit_float(hash_with(h2, 2)) * (self._slot_ms - dur - self._ims)).astype(np.int64)
        start = -(-start // self._ims) * self._ims
        return IncidentArrays(d.astype(np.int64), kind, start, start + dur, self._default_mag[kind],
                     self._kind_drives[kind])

    def _random_days(self, e_lo: int, e_hi: int) -> IncidentArrays:
        key = (e_lo, e_hi)
        if key not in self._epoch_cache:
            if len(self._epoch_cache) >= 32:
                self._epoch_cache.clear()
            self._epoch_cache[key] = self._random_block(e_lo, e_hi)
        return self._epoch_cache[key]

    def _carry(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """(what random incidents before ``day`` added to each integrated metric, time of
        each device's last random counter reset before ``day``), memoised at checkpoints."""
        origin = RANDOM_ORIGIN_MS // DAY_MS
        if not self._rate or day <= origin:
            return self._checkpoints[origin]
        if day not in self._carry_cache:
            c = origin + (day - origin) // CHECKPOINT_DAYS * CHECKPOINT_DAYS
            done = max(x for x in self._checkpoints if x <= c)
            for k in range(done, c, CHECKPOINT_DAYS):
                self._checkpoints[k + CHECKPOINT_DAYS] = self._advance(k, k + CHECKPOINT_DAYS)
            if len(self._carry_cache) >= 256:
                self._carry_cache.clear()
            self._carry_cache[day] = self._advance(c, day)
        return self._carry_cache[day]

    def _advance(self, e_lo: int, e_hi: int) -> tuple[np.ndarray, np.ndarray]:
        """The carry at checkpoint ``e_lo`` moved on to day ``e_hi``."""
        total, last = (a.copy() for a in self._checkpoints[e_lo])
        inc = self._random_block(e_lo, e_hi)
        for col, j in enumerate(self._integrated):
            sub = inc[self._contributes(inc, j)]
            total[:, col] += np.bincount(sub.dev, self._contrib(j, sub, sub.e), len(self._devices))
        resets = inc[inc.kind == RESET]
        np.maximum.at(last, resets.dev, resets.s)
        return total, last

    def _incidents_for(self, rows: np.ndarray, t_first: int, t_last: int) -> IncidentArrays:
        random = self._random_days(t_first // DAY_MS, t_last // DAY_MS + 1)
        inc = IncidentArrays.concat([self._explicit, random])
        member = np.zeros(len(self._devices), bool)
        member[rows] = True
        return inc[member[inc.dev] & (inc.s < t_last)]

    def incidents_between(self, since_ms: int, until_ms: int) -> list[Incident]:
        """Ground truth: explicit and random incidents overlapping (since_ms, until_ms]."""
        found = [x for x in self._explicit_list if x.start_ms < until_ms and x.end_ms > since_ms]
        inc = self._random_block(int(since_ms) // DAY_MS, int(until_ms) // DAY_MS + 1)
        inc = inc[(inc.s < until_ms) & (inc.e > since_ms)]
        names = np.array(self.metrics)
        found += [Incident(self._devices[inc.dev[i]], KINDS[inc.kind[i]], int(inc.s[i]), int(inc.e[i]),
                           names[inc.drives[i]].tolist(), float(inc.mag[i])) for i in range(len(inc))]
        return sorted(found, key=lambda x: (x.start_ms, x.device_id, x.kind))

    def _labels(self, rows: np.ndarray, t_ms: np.ndarray, inc: IncidentArrays) -> np.ndarray:
        """The label column (devices x ticks): 1 where one of the incidents shows."""
        pos = np.full(len(self._devices), -1)
        pos[rows] = np.arange(len(rows))
        which, k = expand_spans(np.searchsorted(t_ms, inc.s, "right"), np.searchsorted(t_ms, inc.e, "right"),
                           np.ones(len(inc), bool))
        label = np.zeros((len(rows), len(t_ms)), np.int8)
        label[pos[inc.dev[which]], k] = 1
        return label

    @staticmethod
    def _contributes(inc: IncidentArrays, j: int) -> np.ndarray:
        return inc.drives[:, j] & np.isin(inc.kind, (DDOS, EXFIL, LINK_DOWN))

    def _contrib(self, j: int, inc: IncidentArrays, u_ms: np.ndarray) -> np.ndarray:
        """Whole units incidents added to integrated metric j by time u (link_down: minus the
        base traffic it stopped)."""
        role, d, s = self._roles[j], inc.dev, inc.s
        u = np.clip(u_ms, s, inc.e)
        jd = self._J(d, u) - self._J(d, s)
        extra = -self._scale[j][d] * jd
        if role in ("bytes_in", "packets_in"):
            ddos = (inc.mag - 1.0) * self._b_in[d] * jd / (SMALL_PACKET_B if role == "packets_in" else 1.0)
            extra = np.where(inc.kind == DDOS, ddos, extra)
        elif role in ("bytes_out", "packets_out"):
            ramp = inc.mag * self._b_out[d] * ((u - s) / 1000.0) ** 2 / (2.0 * (inc.e - s) / 1000.0)
            per = self._pkt[d] if role == "packets_out" else 1.0
            extra = np.where(inc.kind == EXFIL, ramp / per, extra)
        return np.rint(extra)

    def _y_at(self, dev: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Smooth reset-free values at (device, time) points: what a counter reset subtracts."""
        keys = list(zip(dev.tolist(), at.tolist(), strict=True))
        todo = sorted({k for k in keys if k not in self._y_cache})
        if todo:
            if len(self._y_cache) > 100_000:
                self._y_cache.clear()
            ud = np.unique([d for d, _ in todo])
            ut = np.unique([a for _, a in todo]) // self._ims
            inc = self._incidents_for(ud, int(ut[0] * self._ims), int(ut[-1] * self._ims))
            Y = self._integrate(ud, ut, inc, None)
            pd_, pt = {d: i for i, d in enumerate(ud.tolist())}, {t: i for i, t in enumerate(ut.tolist())}
            for d, a in todo:
                self._y_cache[(d, a)] = np.array([Y[j][pd_[d], pt[a // self._ims]] for j in self._integrated])
        return np.array([self._y_cache[k] for k in keys]).reshape(len(keys), len(self._integrated))

    def _apply_resets(self, rows: np.ndarray, ticks: np.ndarray, V: dict[int, np.ndarray],
                      inc: IncidentArrays) -> None:
        """After a reset at r a counter reads V(t) - Y(r) + bound: restarted near 0, never < 0."""
        counters = [j for j in self._integrated if self.metrics[j] in self._counters]
        t_ms = ticks * self._ims
        _, last = self._carry(int(t_ms[0]) // DAY_MS)
        resets, prior = inc[inc.kind == RESET], last[rows] != _NO_RESET
        dev = np.concatenate([resets.dev, rows[prior]])
        if not counters or not len(dev):
            return
        at = np.concatenate([resets.s, last[rows][prior]])
        drives = np.concatenate([resets.drives, np.tile(self._kind_drives[RESET], (int(prior.sum()), 1))])
        order = np.argsort(at, kind="stable")
        dev, at, drives = dev[order], at[order], drives[order]
        first = np.searchsorted(t_ms, at, "right")
        y_at = self._y_at(dev, at)
        pos = np.full(len(self._devices), -1)
        pos[rows] = np.arange(len(rows))
        for j in counters:
            ev = np.flatnonzero(drives[:, j] & (first < len(ticks)))
            if not len(ev):
                continue
            mark = np.full(V[j].shape, -1)
            np.maximum.at(mark, (pos[dev[ev]], first[ev]), ev)
            mark = np.maximum.accumulate(mark, axis=1)
            hit = mark >= 0
            bound = np.broadcast_to(self._noise(j, rows[:, None], None), V[j].shape)
            V[j][hit] = V[j][hit] - y_at[mark[hit], self._col[j]] + bound[hit]
