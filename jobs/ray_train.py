"""Train the detector on Ray Train (``TorchTrainer``, DDP over ``--workers``).

A history the driver holds (:func:`train_on_ray`) reaches the workers as one object in the
object store: the scaled rows once and the rows of the training and held-out targets, not
the windows (``window`` times the history). Each rank cuts its own share of the windows
from it while it trains. It once went through Ray Data too, whose expansion tasks ran in
worker processes of their own: on 2 cores an epoch then trained 713 windows/s against 9,000
in one process, and a demo trial spent most of its minute waiting on them. A fleet history
larger than the driver's memory (:func:`store_split_datasets`) is read from the store
inside Ray Data tasks and streamed to the workers as dataset shards.

Each epoch rank 0 reports a checkpoint holding the current weights, the optimizer, the
early-stopping state and the best weights so far; after a worker dies, Ray Train
(``FailureConfig``) restarts the group and the loop resumes from that checkpoint.

The job users run is :mod:`jobs.train` (``python -m jobs.train --train-csv FILE.csv`` or
``--from-store``); this module is its Ray Train loop.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eyenet.config import DetectorConfig
from eyenet.detection.detector import Detector, TrainingData
from eyenet.detection.features import split_segments, window_targets, windows_at
from eyenet.detection.fit_by_device import DeviceSplit, flag_spans
from eyenet.detection.networks import loss_fn, usable_device
from eyenet.detection.training import (
    EarlyStopping,
    FitResult,
    build_net,
    eval_loss,
    out_of_time,
    seed_everything,
    train_epoch,
)
from eyenet.errors import EyeNetError

STATE_FILE = "state.pt"
STREAM_WINDOWS = 4096
EVAL_BATCH = 1024
# Ray Data's expansion tasks are light numpy; they ask for a quarter CPU, and workers leave
# half a CPU of the cluster to them, so Train and Data never wait on each other for a
# scheduling slot on a small machine (2 workers on 2 cores, or a Tune trial's driver).
DATA_TASK_CPUS = 0.25
DATA_RESERVE_CPUS = 0.5
NO_FLOOR_MS = -(2**62)


def rank_targets(targets: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The target rows that are ``rank``'s: every ``world``-th, the same count on every rank
    (DDP steps together; the remainder of fewer than ``world`` windows is left out), so
    every window is trained on once per epoch."""
    return np.asarray(targets)[rank::world][:len(targets) // world]


class RankWindows:
    """One rank's windows: the scaled history's rows and the rows its targets sit at. An
    epoch shuffles all of them, as training in one process does: a shuffle within blocks of
    a few chunks (each one device's stretch of time) fed mini-batches of two or three devices
    at a time, and validation loss came out ten times the in-process one."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray, targets: np.ndarray, window: int,
                 objective: str) -> None:
        self.rows, self.labels, self.targets = rows, labels, np.asarray(targets, np.int64)
        self.window, self.forecast = window, objective == "forecast"

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int, device: torch.device, seed: int | None) -> Any:
        """One epoch's mini-batches (``x``, ``y``) on ``device``; shuffled when a seed is given."""
        order = (np.random.default_rng(seed).permutation(len(self.targets)) if seed is not None
                 else np.arange(len(self.targets)))
        for i in range(0, len(order), batch_size):
            t = self.targets[order[i:i + batch_size]]
            x = windows_at(self.rows, t, self.window)
            y = self.rows[t] if self.forecast else self.labels[t][:, None]
            yield torch.from_numpy(x).to(device), torch.from_numpy(np.ascontiguousarray(y)).to(device)


def store_chunk_dataset(store_uri: str, detector: Detector, devices: list[str], start_ms: int,
                        end_ms: int, span_ms: int) -> Any:
    """Chunks read from the store inside Ray Data tasks, one device time span per task.

    ``detector`` must be prepared (its scaler fitted); each span is read with enough lead
    for its first window. Windows touching flagged samples are left out, as in training.
    """
    specs = [{"device_id": d, "start_ms": s, "end_ms": min(s + span_ms, end_ms), "floor_ms": NO_FLOOR_MS}
             for d in devices for s in range(start_ms, end_ms, span_ms)]
    return _store_dataset(store_uri, detector, specs, None)


def store_split_datasets(store_uri: str, detector: Detector, splits: list[DeviceSplit], span_ms: int,
                         incidents: dict[str, list[tuple[int, int]]]) -> dict[str, Any]:
    """``train`` and ``val`` datasets read from the store inside Ray Data tasks: each
    device's history before its held-out tail, and the tail (``splits``, from
    :class:`eyenet.detection.fit_by_device.DeviceFit`), cut into ``span_ms`` spans, one per
    task. ``incidents`` (device -> (start_ms, end_ms)) are flagged as the driver flagged
    them. No window mixes training and held-out rows, as in :meth:`Detector.prepare`."""
    if span_ms <= 0:
        raise EyeNetError(f"span_ms must be > 0, got {span_ms}")

    def specs(first: str, last: str) -> list[dict[str, Any]]:
        return [{"device_id": s.device_id, "start_ms": a, "end_ms": min(a + span_ms, getattr(s, last)),
                 "floor_ms": getattr(s, first)}
                for s in splits for a in range(getattr(s, first), getattr(s, last), span_ms)]

    return {"train": _store_dataset(store_uri, detector, specs("first_ms", "cut_ms"), incidents),
            "val": _store_dataset(store_uri, detector, specs("cut_ms", "end_ms"), incidents)}


def _store_dataset(store_uri: str, detector: Detector, specs: list[dict[str, Any]],
                   incidents: dict[str, list[tuple[int, int]]] | None) -> Any:
    import ray.data

    cfg = detector.config
    window, n_feat, forecast = cfg.window_steps, len(detector.feature_names), cfg.objective == "forecast"
    # the lead gives a span's first window its rows and its rolling features their history;
    # rows before a spec's floor give features only, never window rows
    lead_ms = int((window * detector.gap_s + (cfg.rolling_s or 0.0)) * 1000)

    def load(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from eyenet.store import open_store

        store = open_store(store_uri)
        xs = [np.zeros((0, window, n_feat), np.float32)]
        ys = [np.zeros((0, n_feat if forecast else 1), np.float32)]
        for device_id, start, end, floor in zip(batch["device_id"], batch["start_ms"], batch["end_ms"],
                                                batch["floor_ms"], strict=True):
            frame = store.read_range((int(start) - lead_ms) / 1000.0, int(end) / 1000.0,
                                     device_ids=[str(device_id)])
            if incidents is not None:
                frame = flag_spans(frame, incidents)
            if len(frame) <= window:
                continue
            feats = detector.features(frame)
            scaled = detector.scaled(feats).scaled
            ts = feats.timestamps_ms
            segments = split_segments(feats.segments, np.r_[False, (ts[1:] >= floor) & (ts[:-1] < floor)])
            targets = window_targets(segments, window, feats.flagged if forecast else None)
            targets = targets[(ts[targets] >= start) & (ts[targets] < end)]
            xs.append(windows_at(scaled, targets, window))
            ys.append(scaled[targets] if forecast else feats.flagged[targets].astype(np.float32)[:, None])
        return {"x": np.concatenate(xs), "y": np.concatenate(ys)}

    return ray.data.from_items(specs).map_batches(load, batch_size=1, num_cpus=DATA_TASK_CPUS)


def _batches(shard: Any, batch_size: int, device: torch.device, seed: int | None) -> Any:
    """Mini-batches of a dataset shard; shuffled when a seed is given.

    Ray Data hands over large blocks (``STREAM_WINDOWS``), shuffled in a local buffer, and
    the worker cuts them into mini-batches itself: fetching each 32-window batch from Ray
    Data costs more than the forward and backward pass it feeds.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for block in shard.iter_torch_batches(
            batch_size=STREAM_WINDOWS, dtypes=torch.float32,
            device=device,  # Ray Data's "auto" is the GPU Ray assigned, usable or not
            local_shuffle_buffer_size=2 * STREAM_WINDOWS if seed is not None else None,
            local_shuffle_seed=seed):
        x, y = block["x"], block["y"]
        order = torch.randperm(len(x), generator=generator) if generator is not None else None
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
            yield x[idx].to(device), y[idx].to(device)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = DetectorConfig.model_validate(loop_config["detector"])
    max_epochs = loop_config.get("max_epochs") or cfg.max_epochs
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray pins a 1-CPU worker to one thread; on CPU, the workers of a node share its cores
    # as a plain process would use them all (Ray Data's expansion tasks are light).
    if not loop_config.get("gpus"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.get_local_world_size()))
    seed_everything(cfg.seed)
    base = build_net(cfg, loop_config["n_features"])
    device = usable_device(ray.train.torch.get_device(), f"training worker {rank}")
    net = ray.train.torch.prepare_model(base, move_to_device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    loss = loss_fn(cfg.objective)
    stopper = EarlyStopping(cfg.patience_epochs, cfg.min_delta)
    best_state, history, start_epoch, resumed_from = copy.deepcopy(base.state_dict()), [], 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            saved = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=True, map_location=device)
        base.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        stopper = EarlyStopping(cfg.patience_epochs, cfg.min_delta, **saved["stopper"])
        best_state, history = saved["best"], saved["history"]
        start_epoch = resumed_from = int(saved["epoch"]) + 1
    fault = loop_config.get("fault_injection") or {}
    loop_started = time.perf_counter()
    batches = _worker_batches(loop_config, cfg, rank, world, device)
    for epoch in range(start_epoch, max_epochs):
        if fault.get("epoch") == epoch and rank == 0 and not os.path.exists(fault["marker"]):
            Path(fault["marker"]).touch()  # die once, as a crashed worker would
            os._exit(1)
        started = time.perf_counter()
        torch.manual_seed(cfg.seed + epoch)  # dropout masks repeat run to run
        seed = hash((cfg.seed, epoch, rank)) % 2**31
        train_loss, seen = train_epoch(net, batches("train", cfg.batch_size, seed), optimizer, loss)
        seconds = time.perf_counter() - started
        val_loss, val_seen = eval_loss(net, batches("val", EVAL_BATCH, None), loss)
        # the time budget counts from this (re)start: a resumed run gets a fresh allowance
        late = out_of_time(cfg, time.perf_counter() - loop_started)
        if world > 1:  # every rank must take the same stopping decisions
            totals = torch.tensor([val_loss * val_seen, val_seen, seen, float(late)], dtype=torch.float64)
            torch.distributed.all_reduce(totals)
            val_loss, seen, late = float(totals[0] / max(totals[1], 1)), int(totals[2]), bool(totals[3])
        if stopper.update(epoch, val_loss):
            best_state = copy.deepcopy(base.state_dict())
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "best_val_loss": stopper.best, "train_samples": seen,
               "samples_per_s": seen / seconds if seconds > 0 else 0.0,
               "resumed_from_epoch": resumed_from if resumed_from is not None else -1}
        history.append(row)
        if rank == 0:
            print(f"epoch {epoch}: train_loss={train_loss:.5f} val_loss={val_loss:.5f} "
                  f"best={stopper.best:.5f} ({seen / max(seconds, 1e-9):,.0f} windows/s)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"model": base.state_dict(), "optimizer": optimizer.state_dict(),
                            "stopper": stopper.state(), "best": best_state, "history": history,
                            "epoch": epoch}, Path(tmp) / STATE_FILE)
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(row)
        if stopper.should_stop or late:
            break


def _worker_batches(loop_config: dict[str, Any], cfg: DetectorConfig, rank: int, world: int,
                    device: torch.device) -> Any:
    """``batches(split, batch_size, seed)``: one epoch's mini-batches of this rank's share of
    ``split`` ("train" or "val"), from the driver's history or from Ray Data shards."""
    import ray
    import ray.train

    if loop_config.get("history") is None:
        shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val")}
        return lambda split, batch_size, seed: _batches(shards[split], batch_size, device, seed)
    history = ray.get(loop_config["history"])
    windows = {split: RankWindows(history["rows"], history["labels"],
                                  rank_targets(history[split], rank, world), cfg.window_steps, cfg.objective)
               for split in ("train", "val")}
    return lambda split, batch_size, seed: windows[split].batches(batch_size, device, seed)


def train_on_ray(detector: Detector, data: TrainingData, **kwargs: Any) -> FitResult:
    """Fit ``detector``'s network on prepared ``data`` with a TorchTrainer; returns the best
    weights. The history goes to the workers through the object store, once. ``kwargs``:
    those of :func:`train_datasets_on_ray`."""
    import ray

    _check_resources(kwargs.get("workers", 1), kwargs.get("gpus", 0))
    history = ray.put({"rows": np.asarray(data.scaled, np.float32),
                       "labels": data.features.flagged.astype(np.float32),
                       "train": data.train_targets, "val": data.val_targets})
    return train_datasets_on_ray(detector, None, data.scaled.shape[1], history=history, **kwargs)


def _check_resources(workers: int, gpus: float) -> None:
    if workers < 1:
        raise EyeNetError(f"workers must be >= 1, got {workers}")
    if gpus < 0:
        raise EyeNetError(f"gpus must be >= 0, got {gpus}")


def train_datasets_on_ray(detector: Detector, datasets: dict[str, Any] | None, n_features: int, *,
                          workers: int = 1, gpus: float = 0, storage_path: str | None = None,
                          max_failures: int = 2, max_epochs: int | None = None,
                          callbacks: list[Any] | None = None, run_name: str | None = None,
                          fault_injection: dict[str, Any] | None = None,
                          cpus_per_worker: float | None = None,
                          history: Any = None) -> FitResult:
    """Fit ``detector``'s network on Ray Data ``datasets`` (``train`` and ``val``, rows of
    window ``x`` and target ``y``: :func:`store_split_datasets`), or on ``history`` (an
    object ref of :func:`train_on_ray`'s rows, labels and ``train``/``val`` target rows)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = detector.config
    _check_resources(workers, gpus)
    if history is None and (datasets is None or set(datasets) != {"train", "val"}):
        raise EyeNetError(f"training needs datasets 'train' and 'val', got {sorted(datasets or {})}")
    if cpus_per_worker is None:
        cpus_per_worker = worker_cpus(workers)
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus / workers} if gpus else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"detector": cfg.model_dump(mode="json"),
                           "n_features": n_features, "max_epochs": max_epochs,
                           "fault_injection": fault_injection, "gpus": gpus, "history": history},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus),
                                     resources_per_worker=resources),
        # one worker exchanges no gradients: gloo's group costs nothing and, unlike NCCL,
        # also forms where the GPU turns out unusable (the worker then trains on the CPU)
        torch_config=TorchConfig(backend="nccl" if gpus and workers > 1 else "gloo"),
        run_config=RunConfig(
            name=run_name or f"eyenet-train-{int(time.time() * 1000)}",
            storage_path=run_storage(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks),
        datasets=datasets if history is None else None)
    started = time.perf_counter()
    result = trainer.fit()
    return fit_result_from_checkpoint(result.checkpoint, time.perf_counter() - started)


def run_storage(storage_path: str | None, prefix: str = "eyenet-train-") -> str:
    """Ray Train's (or Tune's) run storage: a URI as given, a path made absolute (Ray wants
    one), or a fresh temporary directory on this node named ``prefix...``."""
    if storage_path is None:
        return tempfile.mkdtemp(prefix=prefix)
    return storage_path if "://" in storage_path else os.path.abspath(storage_path)


def worker_cpus(workers: int, share_of_cluster: float = 1.0) -> float:
    """CPU to request per Train worker: one, or less where the cluster is too small to
    also leave room for Ray Data (``share_of_cluster``: of the CPUs, for concurrent trials)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0)) * share_of_cluster
    return max(0.1, min(1.0, (total - DATA_RESERVE_CPUS) / workers))


def fit_result_from_checkpoint(checkpoint: Any, seconds: float = float("nan")) -> FitResult:
    if checkpoint is None:
        raise EyeNetError("training finished without a checkpoint (no epoch completed)")
    with checkpoint.as_directory() as ckpt_dir:
        saved = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=True, map_location="cpu")
    stopper = saved["stopper"]
    return FitResult(saved["best"], saved["history"], stopper["best_epoch"], stopper["best"],
                     sum(int(h["train_samples"]) for h in saved["history"]), seconds)
