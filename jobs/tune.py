"""``python -m jobs.tune``: the train job with a Ray Tune search (``eyenet train --tune``).

Each trial trains through Ray Train (:mod:`jobs.ray_tune`); the best trial is calibrated
and registered as staging, like an untuned run.
"""

from __future__ import annotations

from dataclasses import replace

from eyenet.config import EyeNetConfig
from jobs.options import TrainOptions, job_main
from jobs.train import main as train_main


def main(config: EyeNetConfig, options: TrainOptions) -> int:
    return train_main(config, replace(options, tune=True))


if __name__ == "__main__":
    raise SystemExit(job_main(TrainOptions, main, prog="python -m jobs.tune", description=__doc__))
