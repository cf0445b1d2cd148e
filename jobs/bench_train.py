"""``eyenet bench train``: samples/s of the Ray Train loop beside the plain PyTorch loop.

Same model, same data (synthetic, SMD-shaped: correlated daily cycles plus noise), same
batch size and epoch count, in one run. Samples/s counts training windows per second of
epoch time; the first epoch (warm-up: thread pools, Ray Data's first pass) is left out of
both when there is more than one. Ray's end-to-end figure (including start-up) is printed
beside it, because that is what a short job pays.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.detection.training import fit_in_process
from jobs.options import TrainBenchOptions, job_main, print_result


def synthetic_history(rows: int, n_metrics: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    base = np.sin(2 * np.pi * t / 1440)[:, None] * rng.uniform(0.5, 1.5, n_metrics)
    values = base + 0.1 * rng.standard_normal((rows, n_metrics))
    frame = pd.DataFrame(values, columns=[f"m{i:02d}" for i in range(n_metrics)])
    frame.insert(0, "timestamp", pd.date_range("2026-01-01", periods=rows, freq="60s", tz="UTC"))
    frame.insert(0, "device_id", "bench")
    return frame


def _steady(history: list[dict[str, float]]) -> float:
    rows = history[1:] if len(history) > 1 else history
    return float(np.mean([r["samples_per_s"] for r in rows]))


def run_train_bench(*, rows: int = 20_000, metrics: int = 38, epochs: int = 3, workers: int = 1,
                    gpus: float = 0, batch_size: int = 32) -> dict[str, Any]:
    from jobs._ray import ensure_ray
    from jobs.ray_train import train_on_ray

    frame = synthetic_history(rows, metrics)
    names = [c for c in frame.columns if c.startswith("m")]
    config = EyeNetConfig.from_dict({"metrics": names, "counter_metrics": [], "sample_interval_s": 60,
                                     "detector": {"batch_size": batch_size, "patience_epochs": epochs + 1}})
    detector = Detector(config.detector, names, config.gap_s)
    data = detector.prepare(frame)
    cfg = detector.config
    plain = fit_in_process(cfg, data.arrays(data.train_targets, cfg.window_steps, cfg.objective),
                           data.arrays(data.val_targets, cfg.window_steps, cfg.objective),
                           max_epochs=epochs)
    ensure_ray()
    started = time.perf_counter()
    ray_fit = train_on_ray(detector, data, workers=workers, gpus=gpus, max_epochs=epochs)
    wall = time.perf_counter() - started
    plain_rate, ray_rate = _steady(plain.history), _steady(ray_fit.history)
    return {"rows": rows, "metrics": metrics, "epochs": epochs, "batch_size": batch_size,
            "window_steps": cfg.window_steps, "train_windows": len(data.train_targets),
            "workers": workers, "gpus": gpus, "torch_threads": torch.get_num_threads(),
            "plain_samples_per_s": round(plain_rate, 1), "ray_train_samples_per_s": round(ray_rate, 1),
            "ratio_ray_to_plain": round(ray_rate / plain_rate, 3),
            "ray_end_to_end_samples_per_s": round(ray_fit.train_samples / wall, 1),
            "ray_end_to_end_s": round(wall, 2),
            "plain_epoch_samples_per_s": [round(r["samples_per_s"], 1) for r in plain.history],
            "ray_epoch_samples_per_s": [round(r["samples_per_s"], 1) for r in ray_fit.history]}


def main(config: EyeNetConfig, options: TrainBenchOptions) -> int:
    if options.from_store:
        from jobs.bench_train_store import run_store_prep_bench

        print_result(run_store_prep_bench(options.store_samples, options.samples_per_device), options.json)
        return 0
    print_result(run_train_bench(rows=options.rows, metrics=options.metrics, epochs=options.epochs,
                                 workers=options.workers, gpus=options.gpus, batch_size=options.batch_size),
                 options.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(TrainBenchOptions, main, prog="python -m jobs.bench_train",
                              description=__doc__))
