"""The LSTM networks.

The seed's shape is kept: LSTM (hidden 64, 2 layers) -> Linear 32 -> ReLU -> head. The
head differs by objective:

* ``forecast`` (the default, unsupervised; Telemanom's objective): the head predicts every
  feature of the next step from the window, and the forecast error becomes the score.
  Real fleets have no labels, and a forecaster trained on normal traffic needs none.
* ``classify`` (when labels are given; the seed's objective): Linear 1 -> Sigmoid, trained
  with binary cross-entropy on "is the step after this window anomalous".

With ``from_window_mean`` (decided at training, see DetectorConfig.for_history) the
forecaster sees each window less its own mean per feature and adds that mean back to its
forecast (RevIN's idea without the rescaling). Trained on absolute levels from 30 minutes
of history, it forecast a level it had seen little of badly: a demo device whose bytes rate
climbed on its daily cycle past where training ended flagged 60 % of its quiet points within
a quarter of an hour, and validation loss was 0.0022-0.0029 against 0.0015-0.0017.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

HEAD_HIDDEN = 32


class LSTMDetectorNet(nn.Module):
    def __init__(self, n_features: int, hidden_size: int = 64, num_layers: int = 2,
                 dropout: float = 0.0, objective: str = "forecast", from_window_mean: bool = False) -> None:
        super().__init__()
        self.objective = objective
        self.from_window_mean = from_window_mean and objective == "forecast"
        self.lstm = nn.LSTM(n_features, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        out = n_features if objective == "forecast" else 1
        layers: list[nn.Module] = [nn.Linear(hidden_size, HEAD_HIDDEN), nn.ReLU(),
                                   nn.Linear(HEAD_HIDDEN, out)]
        if objective == "classify":
            layers.append(nn.Sigmoid())
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, window, features) -> (batch, features) or (batch, 1)."""
        if not self.from_window_mean:
            output, _ = self.lstm(x)
            return self.head(output[:, -1])
        level = x.mean(dim=1, keepdim=True)
        output, _ = self.lstm(x - level)
        return self.head(output[:, -1]) + level[:, 0]


def usable_device(assigned: torch.device | str, who: str) -> torch.device:
    """``assigned``, or the CPU (with a warning naming ``who``) when it is a GPU this
    process cannot use: a node that advertises a GPU without a working CUDA driver, or a
    CPU-only torch build."""
    device = torch.device(assigned)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"warning: {who} was given {device}, but torch sees no CUDA device (torch "
              f"{torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
              "running on the CPU", flush=True)
        return torch.device("cpu")
    return device


def loss_fn(objective: str) -> nn.Module:
    return nn.MSELoss() if objective == "forecast" else nn.BCELoss()


@torch.no_grad()
def predict(net: nn.Module, windows: np.ndarray, batch_size: int = 4096,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Forward ``windows`` (n, window, features) in batches, in eval mode, as numpy."""
    was_training = net.training
    net.eval()
    try:
        outs = [net(torch.from_numpy(windows[i:i + batch_size]).to(device)).cpu().numpy()
                for i in range(0, len(windows), batch_size)]
    finally:
        net.train(was_training)
    if not outs:
        return np.empty((0, net.head[2].out_features), np.float32)
    return np.concatenate(outs)
