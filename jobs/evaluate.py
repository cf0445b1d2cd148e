"""``eyenet evaluate``: every detector kind beside the IsolationForest and PCA baselines on
shared/datasets.

Per series, in one run and one code path: each model is a :class:`Detector` of its kind
(the LSTM trained through Ray Train, once; the others fitted in process), with the same
split, features, scaler and threshold rule. Thresholds never see test labels. Prints a
table (or JSON) per series and the mean per dataset.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.datasets import load_nab, load_smd, nab_series, smd_machines, smd_segments
from eyenet.detection.detector import Detector
from eyenet.detection.evaluation import EVALUATED_MODELS, attribution_hit_rate, mean_table, score_series
from eyenet.detection.features import metric_of
from eyenet.errors import EyeNetError
from eyenet.telemetry.schema import LABEL
from jobs.fitting import config_for
from jobs.options import EXIT_ERROR, EvaluateOptions, job_main


def evaluate_series(name: str, dataset: str, train: pd.DataFrame, test: pd.DataFrame,
                    metrics: list[str], config: EyeNetConfig,
                    blamed: list[tuple[int, int, set[str]]] | None = None,
                    models: tuple[str, ...] = tuple(EVALUATED_MODELS), workers: int = 1, gpus: float = 0,
                    max_epochs: int | None = None) -> list[dict[str, Any]]:
    """One row per model: each fitted on ``train`` and scored on ``test`` the same way. The
    LSTM trains once (Ray Train); kinds that include it (the ensemble) reuse its weights."""
    from jobs._ray import ensure_ray
    from jobs.ray_train import train_on_ray

    cfg = config_for(config, metrics, train)
    base = cfg.detector.model_dump()
    test_frame = test.drop(columns=[LABEL])
    flagged: Any = None   # the test labels, in the detectors' row order (the same for every kind)
    network: Any = None
    rows: list[dict[str, Any]] = []
    for model in models:
        started = time.perf_counter()
        det_cfg = cfg.detector.model_validate({**base, **EVALUATED_MODELS[model]})
        detector = Detector(det_cfg, cfg.metrics, cfg.gap_s)
        data = detector.prepare(train)
        if det_cfg.needs_network and network is None:
            ensure_ray()
            network = train_on_ray(detector, data, workers=workers, gpus=gpus, max_epochs=max_epochs)
        detector.finish(network if det_cfg.needs_network else None, data)
        scored = detector.score(test_frame, history=train)
        if flagged is None:
            flagged = detector.features(test).flagged
        decision = scored["is_anomaly"].to_numpy()
        row = {"dataset": dataset, "series": name, "model": model,
               **score_series(flagged, scored["raw_score"].to_numpy(), decision),
               "seconds": time.perf_counter() - started, "epochs": detector.training.get("epochs")}
        if blamed:
            top = np.array([metric_of(f, metrics) if f else "" for f in scored["top_feature"]], dtype=object)
            row["attribution_hit_rate"] = attribution_hit_rate(decision, top, blamed)
        rows.append(row)
    return rows


def run_evaluation(root: str, config: EyeNetConfig, *, datasets: tuple[str, ...] = ("smd", "nab"),
                   series: list[str] | None = None, models: tuple[str, ...] = tuple(EVALUATED_MODELS),
                   **train_kw: Any) -> dict[str, Any]:
    if not Path(root).is_dir():
        raise EyeNetError(f"datasets directory {root} does not exist")
    jobs: list[tuple[str, str, Any]] = []
    if "smd" in datasets:
        jobs += [("smd", p.name, p) for p in smd_machines(root)]
    if "nab" in datasets:
        jobs += [("nab", p.stem, p) for p in nab_series(root)]
    if series:
        jobs = [j for j in jobs if j[1] in series]
    if not jobs:
        raise EyeNetError(f"no series found under {root} for datasets {datasets} / series {series}")
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for dataset, name, path in jobs:
        try:  # one unreadable series is reported, and the others still run
            train, test, metrics = load_smd(path) if dataset == "smd" else load_nab(path)
            blamed = smd_segments(path) if dataset == "smd" else None
            rows += evaluate_series(name, dataset, train, test, metrics, config, blamed, models,
                                    **train_kw)
        except EyeNetError as exc:
            errors.append({"dataset": dataset, "series": name, "error": str(exc)})
            print(f"{dataset:4} {name:40} FAILED: {exc}", flush=True)
            continue
        for r in rows[-len(models):]:
            print(f"{dataset:4} {name:30} {r['model']:25} AUPRC={r.get('auprc', np.nan):.3f} "
                  f"VUS-PR={r.get('vus_pr', np.nan):.3f} "
                  f"F1={r['f1']:.3f} P={r['precision']:.3f} R={r['recall']:.3f}", flush=True)
    means = {f"{d}/{m}": mean_table([r for r in rows if r["dataset"] == d and r["model"] == m])
             for d in datasets for m in models if any(r["dataset"] == d for r in rows)}
    return {"protocol": "train on train only; thresholds from held-out training tail "
                        "(peaks-over-threshold), never test labels; f1/precision/recall point-wise; "
                        "oracle_best_f1 uses test labels (oracle); point_adjusted_f1 is point-adjusted",
            "series": rows, "mean": means, "errors": errors}


def main(config: EyeNetConfig, options: EvaluateOptions) -> int:
    result = run_evaluation(options.data, config, datasets=tuple(options.datasets), series=options.series,
                            models=tuple(options.models), **options.train_kw)
    if options.out:
        with open(options.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    if options.json:
        print(json.dumps(result))
    else:
        for key, table in result["mean"].items():
            print(f"mean {key:30} " + " ".join(
                f"{k}={table[k]:.3f}" for k in ("auprc", "vus_pr", "f1", "precision", "recall",
                                                "event_recall", "oracle_best_f1", "point_adjusted_f1",
                                                "attribution_hit_rate") if k in table))
    for failure in result["errors"]:
        print(f"eyenet: error: {failure['dataset']}/{failure['series']}: {failure['error']}", file=sys.stderr)
    return EXIT_ERROR if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(job_main(EvaluateOptions, main, prog="python -m jobs.evaluate",
                              description=__doc__))
