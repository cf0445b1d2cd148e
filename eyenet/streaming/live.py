"""What a feature actor does with the samples collectors forward: score them, turn anomalies
into events, and summarise each batch for the monitor.

An *anomaly event* (kind ``anomaly``) covers one episode: consecutive anomalous points of
a device with no quiet stretch longer than ``alerts.resolve_after_s`` between them. It is
written once the episode holds ``alerts.anomaly_min_points`` points (the count that opens
a device anomaly alert; so operators see it within seconds), refreshed while it lasts
(at most every ``EPISODE_REFRESH_S``) and closed with status ``resolved``; its id stays
the same, so each write replaces the last. ``metrics`` names the metrics that drove it:
the configured metrics behind the top features of its points, most frequent first.

A *regime change* (kind ``regime_change``, see :mod:`eyenet.detection.regime`) is written when a
device's new level is adopted. The anomaly episode the move opened becomes that one
event (same id, now ``regime_change``, resolved), so a device that moves to a new normal
leaves one alert, not an open anomaly and a second event.

A pool that starts or restarts takes up each device's open episode from the store when it
meets the device (:meth:`LiveScorer._resume_episodes`): a feature actor killed in the middle
of an incident used to leave that incident's event open for ever and open a second one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.detection.device_scaling import DeviceStats
from eyenet.detection.device_state import load_device_state, save_device_state
from eyenet.detection.features import metric_of
from eyenet.detection.regime import RegimeState
from eyenet.errors import StoreError
from eyenet.monitoring.drift import bin_counts
from eyenet.monitoring.monitor import LatencyWindow, ScoreSummary
from eyenet.store import Event, Store
from eyenet.streaming.scorer import BUFFER_SLACK_ROWS, PRIME_SPANS, StreamScorer
from eyenet.telemetry.schema import DEVICE, TIMESTAMP, from_ms, ms_of, parse_timestamps, to_ms

log = logging.getLogger(__name__)

EPISODE_REFRESH_S = 10.0
MAX_EVENT_METRICS = 3


@dataclass
class _Episode:
    event_id: str
    start_ms: int
    last_ms: int
    max_score: float = 0.0
    points: int = 0
    metrics: Counter[str] = field(default_factory=Counter)
    written_at_s: float = 0.0


def anomaly_points(detector: Detector, devices: Iterable[Any], ts_ms: Iterable[Any], scores: Iterable[Any],
                   top_features: Iterable[list[str]]) -> list[tuple[str, int, float, list[str]]]:
    """Flagged points as the monitor takes them: (device, ms, score, metrics that drove it,
    most first), the metrics being the configured ones behind the top features."""
    return [(str(d), int(t), float(s), list(dict.fromkeys(metric_of(f, detector.metrics) for f in tops)))
            for d, t, s, tops in zip(devices, ts_ms, scores, top_features, strict=True)]


def batch_summary(detector: Detector, device_ids: list[str],
                  anomalies: list[tuple[str, int, float, list[str]]], features: np.ndarray,
                  latency_ms: float, n_windows: int, model_version: int | None,
                  sent_at_s: float, learning: Iterable[bool] | None = None,
                  scores: Iterable[float] | None = None,
                  thresholds: Iterable[float] | None = None) -> ScoreSummary:
    """One scored batch for the monitor (live scoring and the Serve replicas send the same);
    per entry of ``device_ids``: ``learning``, that row's device was still learning its scale;
    ``scores`` and ``thresholds``, that row's calibrated score and threshold (for /metrics)."""
    counts = bin_counts(features, detector.feature_names, detector.reference)
    flags = list(learning) if learning is not None else [False] * len(device_ids)
    # a device's newest row (the last one given) says where it stands
    states = {str(d): bool(x) for d, x in zip(device_ids, flags, strict=True)}
    return ScoreSummary(sent_at_s=sent_at_s, latency_ms=latency_ms, n_windows=n_windows,
                        device_counts=dict(Counter(device_ids)), anomalies=anomalies,
                        feature_counts={k: v.tolist() for k, v in counts.items()},
                        model_version=model_version,
                        learning_devices=sorted(d for d, x in states.items() if x),
                        judged_devices=sorted(d for d, x in states.items() if not x),
                        scores=_newest(device_ids, scores), thresholds=_newest(device_ids, thresholds))


def _newest(device_ids: list[str], values: Iterable[float] | None) -> dict[str, float]:
    """Each device's value from its last row (the newest), as plain floats."""
    if values is None:
        return {}
    return {str(d): float(v) for d, v in zip(device_ids, values, strict=True)}


class LiveScorer:
    def __init__(self, detector: Detector, store: Store, config: EyeNetConfig,
                 model_version: int | None = None, now_s: Callable[[], float] = time.time) -> None:
        self.store, self.config = store, config
        self.detector, self.model_version = detector, model_version
        self.stream = self._stream(detector)
        self._now_s = now_s
        self.episodes: dict[str, _Episode] = {}
        self._met: set[str] = set()   # devices whose open episode was looked for in the store
        self.sample_age_ms = LatencyWindow(config.monitor.latency_window_s, now_s)
        self.poll_to_score_ms = LatencyWindow(config.monitor.latency_window_s, now_s)
        self.totals: Counter[str] = Counter()

    def _stream(self, detector: Detector) -> StreamScorer:
        # unseen devices learn their scale once; what they learned is kept in the store
        store, names = self.store, detector.feature_names
        return StreamScorer(detector, self.config.streaming.buffer_samples,
                            lookup=lambda d: load_device_state(store, DeviceStats, d, names),
                            regime_lookup=lambda d: load_device_state(store, RegimeState, d, names),
                            history=self._stored_before)

    def _stored_before(self, device_ids: list[str], first_ms: dict[str, int]) -> pd.DataFrame:
        """The stored rows a device met for the first time primes its error profile with
        (see :class:`StreamScorer`): one read for every such device of a batch. A store that
        fails leaves them unprimed; scoring goes on."""
        cfg = self.detector.config
        span_ms = int((cfg.window_steps + PRIME_SPANS * cfg.smoothing + BUFFER_SLACK_ROWS)
                      * self.config.sample_interval_s * 1000)
        try:
            return self.store.read_range(from_ms(min(first_ms.values()) - span_ms),
                                         from_ms(max(first_ms.values())), device_ids=device_ids)
        except StoreError as exc:
            self.totals["unprimed_devices"] += len(device_ids)
            log.warning("scoring %d devices met for the first time without their stored rows: %s",
                        len(device_ids), exc)
            return pd.DataFrame()

    def _resume_episodes(self, samples: pd.DataFrame) -> None:
        """Take up the open anomaly episode each device met for the first time left in the
        store (a pool that stopped, or a feature actor that died, while it lasted): one read
        for the batch. The newest one goes on if the device's first new sample is within
        ``alerts.resolve_after_s`` of its end (same event id, so its writes replace it);
        older or other open ones are written resolved. A store that fails leaves them as
        they are; scoring goes on."""
        if samples.empty:
            return
        devices = samples[DEVICE].astype(str).to_numpy()
        new = set(np.unique(devices).tolist()) - self._met   # every batch: keep it cheap
        if not new:
            return
        self._met.update(new)
        ts_ms = to_ms(parse_timestamps(samples[TIMESTAMP])).to_numpy()
        first_ms = pd.Series(ts_ms).groupby(devices).min()
        try:
            left = [e for e in self.store.list_events(kind="anomaly", status="open", limit=100_000)
                    if e.device_id in new]
            gap_ms = self.config.alerts.resolve_after_s * 1000
            for event in sorted(left, key=lambda e: e.payload.get("end_ms", 0), reverse=True):
                device, end_ms = str(event.device_id), int(event.payload.get("end_ms", 0))
                if device not in self.episodes and int(first_ms[device]) - end_ms <= gap_ms:
                    self.episodes[device] = _Episode(
                        event.event_id, int(event.payload.get("start_ms", end_ms)), end_ms,
                        float(event.payload.get("max_score", 0.0)), int(event.payload.get("points", 0)),
                        Counter({m: len(event.metrics) - i for i, m in enumerate(event.metrics)}),
                        written_at_s=self._now_s())
                    self.totals["episodes_resumed"] += 1
                else:
                    self.store.upsert_event(replace(event, status="resolved"))
                    self.totals["episodes_closed_on_resume"] += 1
        except StoreError as exc:
            self.totals["episodes_not_resumed"] += len(new)
            log.warning("could not look up the open episodes of %d devices: %s", len(new), exc)

    def switch_model(self, detector: Detector, model_version: int | None) -> None:
        """Score with another model from the next batch on (a promotion or rollback). Open
        episodes, totals and latency windows carry on; the stream keeps each device's
        buffered samples; scales and regimes are the new model's (saved per feature set)."""
        stream = self._stream(detector)
        stream.take_buffers(self.stream)
        self.detector, self.model_version, self.stream = detector, model_version, stream
        self.totals["model_switches"] += 1

    def score(self, samples: pd.DataFrame,
              polled_at_s: float | None = None) -> tuple[pd.DataFrame, ScoreSummary]:
        """Score new samples; returns the scores and the batch summary for the monitor."""
        started = self._now_s()
        self._resume_episodes(samples)
        scores = self.stream.update(samples)
        done = self._now_s()
        latency_ms = (done - started) * 1000.0
        windows = int(np.count_nonzero(scores["raw_score"].notna()))
        self.totals["windows"] += windows
        self.totals["samples"] += len(scores)
        if len(scores):
            ts_s = to_ms(scores[TIMESTAMP]).to_numpy() / 1000.0
            for age in (done - ts_s) * 1000.0:
                self.sample_age_ms.add(float(age), at_s=done)
            if polled_at_s is not None:
                self.poll_to_score_ms.add((done - polled_at_s) * 1000.0, at_s=done)
        for device, stats in self.stream.last_learned:
            save_device_state(self.store, device, self.detector.feature_names, stats)
            self.totals["devices_learned"] += 1
        anomalies = self._anomalies(scores, done)
        self._regime_changes(done)
        self._close_quiet_episodes(scores, done)
        summary = batch_summary(self.detector, scores[DEVICE].tolist(), anomalies, self.stream.last_features,
                                latency_ms, windows, self.model_version, done, scores["learning"].tolist(),
                                scores["score"].tolist(), scores["threshold"].tolist())
        return scores, summary

    def _anomalies(self, scores: pd.DataFrame, now_s: float) -> list[tuple[str, int, float, list[str]]]:
        flagged = scores[scores["is_anomaly"]]
        out = anomaly_points(self.detector, flagged[DEVICE], to_ms(flagged[TIMESTAMP]), flagged["score"],
                             flagged["top_features"])
        for device, ts_ms, score, named in out:
            self._extend_episode(device, ts_ms, score, named, now_s)
        self.totals["anomalies"] += len(out)
        return out

    def _regime_changes(self, now_s: float) -> None:
        for device, ts_ms, features in self.stream.last_regime_changes:
            # kept for a restarted pool and for Serve, which judge the device as the pool does
            save_device_state(self.store, device, self.detector.feature_names,
                              self.stream.regimes.states[device])
            named = list(dict.fromkeys(metric_of(f, self.detector.metrics) for f in features))
            episode = self.episodes.pop(device, None)
            start_ms = episode.start_ms if episode is not None else ts_ms
            adapt_s = self.detector.config.adapt_after_s
            self.store.upsert_event(Event(
                kind="regime_change", device_id=device, metrics=named, status="resolved",
                ts=pd.Timestamp(start_ms, unit="ms", tz="UTC").to_pydatetime(),
                message=f"regime change on {device}: new normal level of {', '.join(named)} held for "
                        f"{adapt_s:g} s and is now the baseline it is judged against",
                payload={"start_ms": start_ms, "adopted_ms": ts_ms, "features": features,
                         "anomaly_points": episode.points if episode is not None else 0,
                         "model_version": self.model_version},
                event_id=episode.event_id if episode is not None else f"regime-{device}-{ts_ms}"))
            self.totals["regime_changes"] += 1

    def _extend_episode(self, device: str, ts_ms: int, score: float, metrics: list[str],
                        now_s: float) -> None:
        gap_ms = self.config.alerts.resolve_after_s * 1000
        episode = self.episodes.get(device)
        if episode is not None and ts_ms - episode.last_ms > gap_ms:
            self._write_episode(device, episode, "resolved", now_s)
            episode = None
        if episode is None:
            episode = self.episodes[device] = _Episode(f"anomaly-{device}-{ts_ms}", ts_ms, ts_ms)
        episode.last_ms = max(episode.last_ms, ts_ms)
        episode.max_score = max(episode.max_score, score)
        episode.points += 1
        if metrics:
            episode.metrics[metrics[0]] += 1
        if episode.points == self.config.alerts.anomaly_min_points or \
                now_s - episode.written_at_s >= EPISODE_REFRESH_S:
            self._write_episode(device, episode, "open", now_s)

    def _close_quiet_episodes(self, scores: pd.DataFrame, now_s: float) -> None:
        """Close episodes of devices whose newest scored sample is quiet for long enough."""
        if not self.episodes or scores.empty:
            return
        newest = scores.groupby(DEVICE)[TIMESTAMP].max()
        gap_ms = self.config.alerts.resolve_after_s * 1000
        for device, ts in newest.items():
            episode = self.episodes.get(device)
            if episode is not None and ms_of(ts) - episode.last_ms > gap_ms:
                self._write_episode(device, episode, "resolved", now_s)
                del self.episodes[device]

    def _write_episode(self, device: str, episode: _Episode, status: str, now_s: float) -> None:
        """Write the episode's event, once it holds ``alerts.anomaly_min_points`` points (what
        opens a device anomaly alert): fewer are the smoothed score grazing its threshold for
        a moment, and an operator sees neither an event nor an alert for them."""
        if episode.points < self.config.alerts.anomaly_min_points:
            if status == "resolved":
                self.totals["episodes_below_min_points"] += 1
            return
        named = [m for m, _ in episode.metrics.most_common(MAX_EVENT_METRICS)]
        self.store.upsert_event(Event(
            kind="anomaly", device_id=device, metrics=named, status=status,
            ts=pd.Timestamp(episode.start_ms, unit="ms", tz="UTC").to_pydatetime(),
            message=f"anomaly on {device}: {', '.join(named) or 'no single metric'} "
                    f"(max score {episode.max_score:.2f}, {episode.points} points)",
            payload={"start_ms": episode.start_ms, "end_ms": episode.last_ms, "max_score": episode.max_score,
                     "points": episode.points, "model_version": self.model_version},
            event_id=episode.event_id))
        episode.written_at_s = now_s
        self.totals["events_written"] += 1

    def reset_stats(self) -> None:
        window_s = self.config.monitor.latency_window_s
        self.sample_age_ms = LatencyWindow(window_s, self._now_s)
        self.poll_to_score_ms = LatencyWindow(window_s, self._now_s)
        self.totals.clear()

    def flush(self) -> None:
        """Write every open episode's current state (before the actor stops)."""
        now_s = self._now_s()
        for device, episode in self.episodes.items():
            self._write_episode(device, episode, "open", now_s)

    def stats(self) -> dict[str, Any]:
        return {"totals": dict(self.totals), "devices": len(self.stream.devices),
                "open_episodes": len(self.episodes), "model_version": self.model_version,
                "sample_age_ms": self.sample_age_ms.stats(),
                "poll_to_score_ms": self.poll_to_score_ms.stats()}
