"""Search the detector's hyperparameters with Ray Tune (ASHA); every trial trains on Ray Train.

Ray 2.60 runs Train V2: a trial is a function trainable that builds a ``TorchTrainer`` and
calls ``fit()``; ``TuneReportCallback`` forwards each epoch's metrics to Tune, so ASHA can
stop poor trials early. The best trial's weights come back through its Train checkpoint,
and the driver calibrates them into a detector exactly as an untuned run does.

Run as a job: ``python -m jobs.tune --train-csv FILE.csv --trials 8 --time-budget-s 600``
(the same as ``python -m jobs.train ... --tune``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.errors import EyeNetError
from jobs.ray_train import (
    DATA_RESERVE_CPUS,
    fit_result_from_checkpoint,
    run_storage,
    train_on_ray,
    worker_cpus,
)

TRIAL_DRIVER_CPU = 0.01
TUNED_FIELDS = ("hidden_size", "num_layers", "window_steps", "learning_rate", "dropout")


def default_search_space() -> dict[str, Any]:
    from ray import tune

    return {"hidden_size": tune.choice([32, 64, 128]), "num_layers": tune.choice([1, 2]),
            "window_steps": tune.choice([20, 30, 60]),
            "learning_rate": tune.loguniform(3e-4, 3e-3), "dropout": tune.uniform(0.0, 0.3)}


TrialResultHook = Callable[[str, dict[str, Any], dict[str, Any]], None]


def _relay(hook: TrialResultHook) -> Any:
    """A Tune callback (Tune calls it on the driver) handing each trial result to ``hook``."""
    from ray import tune

    class Relay(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            hook(str(trial.trial_id), {k: trial.config.get(k) for k in TUNED_FIELDS}, dict(result))

    return Relay()


def tune_detector(frame: pd.DataFrame, config: EyeNetConfig, *, trials: int = 8,
                  time_budget_s: float = 600.0, workers: int = 1, gpus: float = 0,
                  max_epochs: int | None = None, search_space: dict[str, Any] | None = None,
                  storage_path: str | None = None,
                  on_trial_result: TrialResultHook | None = None,
                  ) -> tuple[Detector, dict[str, Any], list[dict[str, Any]]]:
    """Returns (best fitted detector, its parameters, one summary row per trial).
    ``on_trial_result(trial_id, params, result)`` hears every epoch a trial reports, in
    this process (a progress display). As many trials run at once as give each trial's
    workers a CPU apiece, leaving Ray Data its share."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if trials < 1:
        raise EyeNetError(f"trials must be >= 1, got {trials}")
    if time_budget_s <= 0:
        raise EyeNetError(f"time budget must be > 0 s, got {time_budget_s}")
    storage = run_storage(storage_path, prefix="eyenet-tune-")
    frame_ref = ray.put(frame)
    base = config.detector.model_dump()
    epochs = max_epochs or config.detector.max_epochs

    def trial(params: dict[str, Any]) -> None:
        detector = Detector(config.detector.model_validate({**base, **params}), config.metrics,
                            config.gap_s)
        data = detector.prepare(ray.get(frame_ref))
        train_on_ray(detector, data, workers=workers, gpus=gpus, storage_path=storage,
                     max_epochs=epochs, callbacks=[TuneReportCallback()],
                     run_name=f"trial-{tune.get_context().get_trial_id()}",
                     cpus_per_worker=per_worker)

    cpus = float(ray.cluster_resources().get("CPU", 1))
    concurrent = max(1, int((cpus - DATA_RESERVE_CPUS) // (workers + TRIAL_DRIVER_CPU)))
    # Half the share: a finished trial's Train actors release their CPUs lazily, and the next
    # trial must not wait on them.
    per_worker = worker_cpus(workers, share_of_cluster=0.5 / concurrent)
    tuner = tune.Tuner(
        # the trial only drives; its Train workers hold the CPUs (Tune refuses an empty request)
        tune.with_resources(trial, {"CPU": TRIAL_DRIVER_CPU}),
        param_space=search_space or default_search_space(),
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=trials, time_budget_s=time_budget_s,
            # repeatable draws; the limit goes here: Tune ignores max_concurrent_trials for a
            # generator passed as search_alg (it ran every trial at once, none finishing an epoch)
            search_alg=BasicVariantGenerator(random_state=config.detector.seed, max_concurrent=concurrent),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                    grace_period=min(3, epochs), reduction_factor=2)),
        # with a hook, the caller shows progress: Tune's own status tables stay off
        run_config=tune.RunConfig(storage_path=storage, name="eyenet-tune",
                                  callbacks=[_relay(on_trial_result)] if on_trial_result else None,
                                  verbose=0 if on_trial_result else None))
    grid = tuner.fit()
    rows, best = [], None
    for result in grid:
        metrics = result.metrics or {}
        row = {**{k: result.config.get(k) for k in TUNED_FIELDS},
               "best_val_loss": metrics.get("best_val_loss"), "epochs": metrics.get("epoch", -1) + 1,
               "error": str(result.error) if result.error else None}
        rows.append(row)
        if metrics.get(CHECKPOINT_PATH_KEY) and row["best_val_loss"] is not None and \
                (best is None or row["best_val_loss"] < best[0]["best_val_loss"]):
            best = (row, metrics[CHECKPOINT_PATH_KEY], result.config)
    if best is None:
        errors = [r["error"] for r in rows if r["error"]]
        raise EyeNetError(f"no tuning trial finished an epoch within {time_budget_s} s"
                          + (f"; first error: {errors[0]}" if errors else
                             " (a trial needs Ray Train's start, about a minute on 2 cores, and "
                             "one epoch): give the search more time"))
    params = {k: best[2][k] for k in TUNED_FIELDS if k in best[2]}
    detector = Detector(config.detector.model_validate({**base, **params}), config.metrics, config.gap_s)
    data = detector.prepare(frame)
    fitted = fit_result_from_checkpoint(ray.train.Checkpoint(best[1]))
    return detector.finish(fitted, data), params, rows

