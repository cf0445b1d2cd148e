"""The training loop's pieces, shared by the Ray Train loop (``jobs/train.py``) and the
plain single-process loop (:func:`fit_in_process`), which unit tests and the training
benchmark's baseline use. Both run the same epoch and the same early stopping, so a
difference between them is Ray's, not ours.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from eyenet.config import DetectorConfig
from eyenet.detection.networks import LSTMDetectorNet, loss_fn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_net(config: DetectorConfig, n_features: int) -> LSTMDetectorNet:
    return LSTMDetectorNet(n_features, config.hidden_size, config.num_layers, config.dropout,
                           config.objective, bool(config.forecast_from_window_mean))


def train_epoch(net: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                loss: nn.Module) -> tuple[float, int]:
    """One pass; returns (mean loss per sample, samples seen)."""
    net.train()
    total, seen = 0.0, 0
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        batch_loss = loss(net(x), y)
        batch_loss.backward()
        optimizer.step()
        total += float(batch_loss.detach()) * len(x)
        seen += len(x)
    return (total / seen if seen else float("nan")), seen


@torch.no_grad()
def eval_loss(net: nn.Module, batches: Batches, loss: nn.Module) -> tuple[float, int]:
    """Mean loss per sample over ``batches`` and the number of samples."""
    net.eval()
    total, seen = 0.0, 0
    for x, y in batches:
        total += float(loss(net(x), y)) * len(x)
        seen += len(x)
    return (total / seen if seen else float("nan")), seen


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a validation-loss gain of ``min_delta``."""

    patience: int
    min_delta: float = 0.0
    best: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch; True when it is the new best."""
        if np.isfinite(val_loss) and val_loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int,
                  generator: torch.Generator | None = None) -> Batches:
    """Mini-batches of in-memory arrays, shuffled when a generator is given."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield xt[idx], yt[idx]


def out_of_time(config: DetectorConfig, elapsed_s: float) -> bool:
    return config.max_train_time_s is not None and elapsed_s >= config.max_train_time_s


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("nan")
    train_samples: int = 0
    train_seconds: float = 0.0


def fit_in_process(config: DetectorConfig, train: tuple[np.ndarray, np.ndarray],
                   val: tuple[np.ndarray, np.ndarray],
                   on_epoch: Callable[[dict[str, float]], None] | None = None,
                   max_epochs: int | None = None) -> FitResult:
    """The plain PyTorch loop: Adam, shuffled mini-batches, early stopping, best weights kept."""
    seed_everything(config.seed)
    net = build_net(config, train[0].shape[-1])
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    loss = loss_fn(config.objective)
    stopper = EarlyStopping(config.patience_epochs, config.min_delta)
    generator = torch.Generator().manual_seed(config.seed)
    result = FitResult(copy.deepcopy(net.state_dict()))
    started = time.perf_counter()
    for epoch in range(max_epochs or config.max_epochs):
        epoch_started = time.perf_counter()
        train_loss, seen = train_epoch(net, array_batches(*train, config.batch_size, generator),
                                       optimizer, loss)
        seconds = time.perf_counter() - epoch_started
        val_loss, _ = eval_loss(net, array_batches(*val, 4096), loss)
        result.train_samples += seen
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "train_samples": seen,
               "samples_per_s": seen / seconds if seconds > 0 else 0.0}
        result.history.append(row)
        if stopper.update(epoch, val_loss):
            result.state_dict = copy.deepcopy(net.state_dict())
        if on_epoch:
            on_epoch(row)
        if stopper.should_stop or out_of_time(config, time.perf_counter() - started):
            break
    result.best_epoch, result.best_val_loss = stopper.best_epoch, stopper.best
    result.train_seconds = time.perf_counter() - started
    return result
