"""``eyenet bench fleet``: does a model trained on a few devices judge the rest of a fleet?

A simulated fleet (daily cycles, devices of very different sizes) trains the configured
detector on ``train_devices`` of them; every other device is one the model never saw. Each
unseen device is scored from its first sample: a learning period (``detector.learn_s``)
in which it learns its own scale and never alerts, then judged, with incidents of four
kinds (DDoS burst, latency spike, link down, slow exfiltration) injected on
``incident_devices`` of them during the judged period. Reported: the false-positive rate on
the unseen devices' normal points (judged points, and all points with the learning period
counted as it is, silent), event recall on their incidents, and the same false-positive
rate on the trained devices over the same period, measured side by side. In process and
Ray-free (the LSTM trains with the plain loop), so it measures the method, not the cluster.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.detection.evaluation import label_segments
from eyenet.errors import ConfigError
from eyenet.sources.incidents import Incident
from eyenet.sources.simulator import SimulatedSource
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP
from eyenet.telemetry.validation import TelemetryValidator
from jobs.options import FleetBenchOptions, job_main, print_result

DAY_MS = 86_400_000
INCIDENT_KINDS = ("ddos_burst", "latency_spike", "link_down", "slow_exfiltration")
INCIDENT_S = 1800
SEED = 11


def _incidents(devices: list[str], count: int, judged_from_ms: int,
               rng: np.random.Generator) -> list[Incident]:
    """``count`` incidents of INCIDENT_S on distinct devices, inside the judged day."""
    chosen = rng.choice(devices, size=min(count, len(devices)), replace=False)
    out = []
    for i, device in enumerate(chosen):
        start = judged_from_ms + int(rng.integers(3_600, 86_400 - INCIDENT_S - 3_600)) * 1000
        kind = INCIDENT_KINDS[i % len(INCIDENT_KINDS)]
        out.append(Incident(str(device), kind, start, start + INCIDENT_S * 1000))
    return out


def _false_positive_rate(scored: pd.DataFrame, labels: np.ndarray, judged_only: bool) -> float:
    normal = ~labels
    if judged_only:
        normal &= ~scored["learning"].to_numpy()
    return float(scored["is_anomaly"].to_numpy()[normal].mean()) if normal.any() else float("nan")


def _event_recall(scored: pd.DataFrame, labels: np.ndarray) -> tuple[float, int]:
    found = []
    flagged = scored["is_anomaly"].to_numpy()
    starts = np.flatnonzero(np.r_[True, scored[DEVICE].to_numpy()[1:] != scored[DEVICE].to_numpy()[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(scored)], strict=True):
        found += [bool(flagged[a + s:a + e].any()) for s, e in label_segments(labels[a:b])]
    return (float(np.mean(found)) if found else float("nan")), len(found)


def run_fleet_bench(config: EyeNetConfig, *, devices: int = 1000, train_devices: int = 40,
                    incident_devices: int = 100, history_days: float = 2.0,
                    sample_interval_s: float = 60.0) -> dict[str, Any]:
    if not 1 <= train_devices < devices:
        raise ConfigError(f"--train-devices must be at least 1 and below --devices ({devices}), "
                          f"got {train_devices}", "train_devices", train_devices)
    if incident_devices < 0:
        raise ConfigError(f"--incident-devices must be >= 0, got {incident_devices}", "incident_devices",
                          incident_devices)
    started = time.perf_counter()
    cfg = EyeNetConfig.from_dict({**config.to_dict(), "sample_interval_s": sample_interval_s})
    names = [f"dev-{i:04d}" for i in range(devices)]
    trained, unseen = names[:train_devices], names[train_devices:]
    start_ms = 1_700_000_000_000 // 60_000 * 60_000
    history_ms = int(history_days * DAY_MS)
    learn_ms = int(cfg.detector.learn_s * 1000)
    judged_from = start_ms + history_ms + learn_ms
    rng = np.random.default_rng(SEED)
    source = SimulatedSource(cfg, devices=names, seed=SEED,
                             incidents=_incidents(unseen, incident_devices, judged_from, rng))
    validator = TelemetryValidator(cfg)
    history = validator.validate(source.fetch(trained, start_ms, start_ms + history_ms).samples).accepted
    detector = Detector(cfg.detector, cfg.metrics, cfg.gap_s).fit(history)
    fitted_s = time.perf_counter() - started

    def scored(device_ids: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
        frame = TelemetryValidator(cfg).validate(
            source.fetch(device_ids, start_ms + history_ms, judged_from + DAY_MS).samples).accepted
        out = detector.score(frame.drop(columns=[LABEL], errors="ignore"))
        keyed = frame.sort_values([DEVICE, TIMESTAMP], kind="stable")
        labels = keyed[LABEL].to_numpy() > 0 if LABEL in keyed else np.zeros(len(out), bool)
        return out, labels

    unseen_scored, unseen_labels = scored(unseen)
    trained_scored, trained_labels = scored(trained)
    judged = ~unseen_scored["learning"].to_numpy()
    recall, events = _event_recall(unseen_scored, unseen_labels)
    return {
        "devices": devices, "train_devices": train_devices, "kind": cfg.detector.kind,
        "sample_interval_s": sample_interval_s, "history_days": history_days,
        "learn_s": cfg.detector.learn_s,
        "unseen_false_positive_rate": _false_positive_rate(unseen_scored, unseen_labels, judged_only=True),
        "unseen_false_positive_rate_all_points": _false_positive_rate(unseen_scored, unseen_labels, False),
        "unseen_event_recall": recall, "unseen_events": events,
        "unseen_points": len(unseen_scored), "unseen_judged_points": int(judged.sum()),
        "trained_false_positive_rate": _false_positive_rate(trained_scored, trained_labels, judged_only=True),
        "fit_seconds": fitted_s, "seconds": time.perf_counter() - started}


def main(config: EyeNetConfig, options: FleetBenchOptions) -> int:
    print_result(run_fleet_bench(config, devices=options.devices, train_devices=options.train_devices,
                                 incident_devices=options.incident_devices), options.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(FleetBenchOptions, main, prog="python -m jobs.bench_fleet",
                              description=__doc__))
