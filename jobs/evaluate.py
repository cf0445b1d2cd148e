"""``eyenet evaluate``: the detector beside IsolationForest and PCA on shared/datasets.

Per series, in one run: the detector trained through Ray Train, and both baselines on the
same split, features, scaler and threshold rule. Thresholds never see test labels.
Prints a table (or JSON) per series and the mean per dataset.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.datasets import load_nab, load_smd, nab_series, smd_machines, smd_segments
from eyenet.errors import EyeNetError
from eyenet.evaluation import Baseline, attribution_hit_rate, mean_table, score_series
from eyenet.features import metric_of
from eyenet.telemetry import LABEL
from jobs.detect import config_for, fit_detector

MODELS = ("eyenet", "isolation_forest", "pca")


def evaluate_series(name: str, dataset: str, train: pd.DataFrame, test: pd.DataFrame,
                    metrics: list[str], config: EyeNetConfig,
                    blamed: list[tuple[int, int, set[str]]] | None = None,
                    **train_kw: Any) -> list[dict[str, Any]]:
    cfg = config_for(config, metrics, train)
    started = time.perf_counter()
    detector, _ = fit_detector(train, cfg, source=name, **train_kw)
    scored = detector.score(test.drop(columns=[LABEL]), history=train)
    train_feats, test_feats = detector.features(train), detector.features(test)
    rows = [{"dataset": dataset, "series": name, "model": "eyenet",
             **score_series(test_feats.flagged, scored["raw_score"].to_numpy(),
                            scored["is_anomaly"].to_numpy()),
             "seconds": time.perf_counter() - started, "epochs": detector.training.get("epochs")}]
    if blamed:
        top = np.array([metric_of(f, metrics) if f else "" for f in scored["top_feature"]], dtype=object)
        rows[0]["attribution_hit_rate"] = attribution_hit_rate(scored["is_anomaly"].to_numpy(), top, blamed)
    for kind in ("isolation_forest", "pca"):
        started = time.perf_counter()
        raw, decision = Baseline(kind, cfg.detector).fit(train_feats).score(test_feats)
        rows.append({"dataset": dataset, "series": name, "model": kind,
                     **score_series(test_feats.flagged, raw, decision),
                     "seconds": time.perf_counter() - started})
    return rows


def run_evaluation(root: str, config: EyeNetConfig, *, datasets: tuple[str, ...] = ("smd", "nab"),
                   series: list[str] | None = None, **train_kw: Any) -> dict[str, Any]:
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
            rows += evaluate_series(name, dataset, train, test, metrics, config, blamed, **train_kw)
        except EyeNetError as exc:
            errors.append({"dataset": dataset, "series": name, "error": str(exc)})
            print(f"{dataset:4} {name:40} FAILED: {exc}", flush=True)
            continue
        for r in rows[-3:]:
            print(f"{dataset:4} {name:40} {r['model']:17} AUPRC={r.get('auprc', np.nan):.3f} "
                  f"F1={r['f1']:.3f} P={r['precision']:.3f} R={r['recall']:.3f}", flush=True)
    means = {f"{d}/{m}": mean_table([r for r in rows if r["dataset"] == d and r["model"] == m])
             for d in datasets for m in MODELS if any(r["dataset"] == d for r in rows)}
    return {"protocol": "train on train only; thresholds from held-out training tail "
                        "(peaks-over-threshold), never test labels; f1/precision/recall point-wise; "
                        "oracle_best_f1 uses test labels (oracle); point_adjusted_f1 is point-adjusted",
            "series": rows, "mean": means, "errors": errors}


if __name__ == "__main__":
    import sys

    from eyenet.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
