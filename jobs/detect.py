"""Offline detection: train on one CSV, score another, write one row per test row.

``eyenet detect --train TRAIN.csv --test TEST.csv --out OUT.csv``. Training goes through
the same Ray Train path as ``eyenet train``. The test file is scored with the end of the
training file as context, so its first rows get a full window when the two are
contiguous. OUT (``timestamp,score,is_anomaly,top_feature,regime_change``, in the test file's row order)
is written to a temporary file and renamed, so a failure never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.errors import EyeNetError
from eyenet.telemetry.files import read_metric_csv
from eyenet.telemetry.schema import DEVICE, LABEL, TIMESTAMP, to_ms
from jobs.fitting import config_for, fit_detector
from jobs.options import DetectOptions, job_main


def run_detect(train_csv: str, test_csv: str, out_csv: str, config: EyeNetConfig, **train_kw: Any) -> dict:
    started = time.perf_counter()
    train, metrics = read_metric_csv(train_csv)
    test, _ = read_metric_csv(test_csv, metrics=metrics, device_id=train[DEVICE].iloc[0])
    out_dir = Path(out_csv).resolve().parent
    if not out_dir.is_dir():
        raise EyeNetError(f"{out_csv}: directory {out_dir} does not exist")
    cfg = config_for(config, metrics, train)
    detector, extra = fit_detector(train, cfg, source=str(train_csv), **train_kw)
    # the training tail is context only when the test file follows it in time
    history = train if test[TIMESTAMP].min() > train[TIMESTAMP].max() else None
    scored = detector.score(test.drop(columns=[LABEL], errors="ignore"), history=history)
    key = pd.MultiIndex.from_arrays([scored[DEVICE].to_numpy(), to_ms(scored[TIMESTAMP]).to_numpy()])
    order = key.get_indexer(pd.MultiIndex.from_arrays(
        [test[DEVICE].astype(str).to_numpy(), to_ms(test[TIMESTAMP]).to_numpy()]))
    rows = scored.iloc[order]
    out = pd.DataFrame({"timestamp": rows[TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_numpy(),
                        "score": rows["score"].round(6).to_numpy(),
                        "is_anomaly": rows["is_anomaly"].astype(int).to_numpy(),
                        "top_feature": rows["top_feature"].to_numpy(),
                        "regime_change": rows["regime_change"].to_numpy()})
    fd, tmp = tempfile.mkstemp(prefix=".eyenet-detect-", suffix=".csv", dir=out_dir)
    os.close(fd)
    try:
        out.to_csv(tmp, index=False)
        os.replace(tmp, out_csv)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"out": str(out_csv), "rows": len(out), "anomalies": int(out["is_anomaly"].sum()),
            "regime_changes": int((out["regime_change"] != "").sum()),
            "metrics": len(metrics), "train_rows": len(train), "seconds": time.perf_counter() - started,
            "training": detector.training, **extra}


def main(config: EyeNetConfig, options: DetectOptions) -> int:
    summary = run_detect(options.train, options.test, options.out, config, **options.train_kw)
    print(f"wrote {summary['rows']} rows ({summary['anomalies']} anomalous, {summary['regime_changes']} "
          f"regime changes) to {summary['out']} in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(DetectOptions, main, prog="python -m jobs.detect",
                              description=__doc__))
