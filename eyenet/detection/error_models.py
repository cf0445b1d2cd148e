"""The detector kinds: what turns scaled feature windows into per-feature errors.

Every kind answers one question the same way, :meth:`ErrorModel.point_errors`: given the
scaled feature matrix of a segment and the target rows (rows with a full window before
them), how wrong does each feature look at each target? The :class:`~eyenet.detection.detector.Detector`
around it does everything else the same for every kind (features, scaling, the error
profile's smoothing, calibration, the decision rule, attribution, saving), so the
registry, Serve, the feature pool and the promotion gate take any kind unchanged
(Merlion's shape: the model is one link in a chain of small objects).

Kinds (``detector.kind``):

* ``lstm``: the seed's network as a forecaster (the squared error of the next step's
  forecast); with ``objective: classify`` the seed's BCE classifier, whose output is the
  probability itself. Trained on Ray Train.
* ``pca``: reconstruction error in the principal subspace of subsequences (the last
  ``subsequence_steps`` rows, all features): the strongest simple method on SMD in the
  published no-point-adjustment benchmarks. Fitted in process (seconds).
* ``kmeans``: distance of each subsequence to its nearest k-means centroid (TSB-AD's
  KMeansAD shape). Fitted in process.
* ``isolation_forest``: the IsolationForest baseline, row-wise; its anomaly score is
  shared among the features by their squared deviation, so it still names metrics.
* ``ensemble``: members' errors, each divided by its own calibrated threshold scale, then
  averaged. That is the mean of the members' calibrated scores in threshold units, and it
  is linear, so the error profile, streaming sums and attribution work as for one kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from eyenet.config import DetectorConfig
from eyenet.detection.features import windows_at
from eyenet.detection.networks import predict
from eyenet.detection.training import build_net
from eyenet.errors import ArtifactError

# Rows an in-process kind fits on at most (an evenly spaced sample of the training targets):
# beyond this, PCA's subspace and k-means' centroids no longer move, and fitting stays fast.
MAX_FIT_ROWS = 50_000
PCA_VARIANCE = 0.9
KMEANS_FIT_ROWS = 20_000


class ErrorModel(ABC):
    kind: ClassVar[str]
    outputs_probability: ClassVar[bool] = False

    @abstractmethod
    def point_errors(self, scaled: np.ndarray, targets: np.ndarray,
                     window: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(per-feature errors at ``targets``, shape (len(targets), F); for a classifier
        also its probability per target, else None). ``targets`` have ``window`` rows before
        them in their segment."""

    def state(self) -> dict[str, Any]:
        """JSON-able parameters, saved in detector.json."""
        return {}

    def network(self) -> torch.nn.Module | None:
        """The torch network whose weights go to weights.pt, if this kind has one."""
        return None

    def to_device(self, device: torch.device) -> None:
        """Score on ``device`` from now on (kinds without a network score on the CPU)."""
        return None


# -- the seed's LSTM -------------------------------------------------------------------------
class LSTMForecaster(ErrorModel):
    kind = "lstm"

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.net.eval()
        self.device = torch.device("cpu")

    def to_device(self, device: torch.device) -> None:
        self.net.to(device)
        self.device = device

    def point_errors(self, scaled, targets, window):
        out = predict(self.net, windows_at(scaled, targets, window), device=self.device)
        return (out - scaled[targets]) ** 2, None

    def network(self) -> torch.nn.Module:
        return self.net


class LSTMClassifier(LSTMForecaster):
    """The seed's classifier: its output is already a probability; each feature's
    contribution is its distance from the training median (for attribution)."""

    outputs_probability = True

    def point_errors(self, scaled, targets, window):
        out = predict(self.net, windows_at(scaled, targets, window), device=self.device)
        return scaled[targets] ** 2, out[:, 0]


def lstm_from_weights(config: DetectorConfig, n_features: int,
                      state_dict: dict[str, torch.Tensor]) -> LSTMForecaster:
    net = build_net(config, n_features)
    net.load_state_dict(state_dict)
    return (LSTMClassifier if config.objective == "classify" else LSTMForecaster)(net)


# -- subsequence models ------------------------------------------------------------------------
def subsequences(scaled: np.ndarray, targets: np.ndarray, steps: int) -> np.ndarray:
    """Row t's subsequence: rows t - steps + 1 .. t, flattened feature-major, (n, F * steps)."""
    view = sliding_window_view(scaled, steps, axis=0)  # (n - steps + 1, F, steps)
    return view[targets - steps + 1].reshape(len(targets), -1)


def per_feature(squared: np.ndarray, n_features: int, steps: int) -> np.ndarray:
    """Flattened squared residuals back to one mean error per feature."""
    return squared.reshape(len(squared), n_features, steps).mean(axis=2)


def fit_rows(targets: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of ``targets``, evenly spaced (deterministic)."""
    if len(targets) <= limit:
        return targets
    return targets[np.linspace(0, len(targets) - 1, limit).astype(np.int64)]


class SubspaceModel(ErrorModel):
    """PCA reconstruction error of subsequences."""

    kind = "pca"

    def __init__(self, steps: int, mean: np.ndarray, components: np.ndarray) -> None:
        self.steps, self.mean, self.components = steps, mean, components

    @classmethod
    def fit(cls, scaled: np.ndarray, targets: np.ndarray, config: DetectorConfig) -> SubspaceModel:
        steps = config.subsequence_steps
        x = subsequences(scaled, fit_rows(targets, MAX_FIT_ROWS), steps)
        # a residual needs fewer components than dimensions; one dimension keeps none
        pca = PCA(n_components=PCA_VARIANCE if x.shape[1] > 1 else 1, random_state=config.seed).fit(x)
        components = pca.components_ if x.shape[1] > 1 else np.zeros((0, 1))
        return cls(steps, pca.mean_.astype(np.float64), components.astype(np.float64))

    def point_errors(self, scaled, targets, window):
        x = subsequences(scaled, targets, self.steps).astype(np.float64) - self.mean
        residual = x - (x @ self.components.T) @ self.components
        return per_feature(residual ** 2, scaled.shape[1], self.steps), None

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps, "mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SubspaceModel:
        mean = np.asarray(state["mean"], np.float64)
        components = np.asarray(state["components"], np.float64).reshape(-1, len(mean))
        return cls(int(state["steps"]), mean, components)


class ClusterModel(ErrorModel):
    """Squared distance of each subsequence to its nearest k-means centroid."""

    kind = "kmeans"

    def __init__(self, steps: int, centroids: np.ndarray) -> None:
        self.steps, self.centroids = steps, centroids

    @classmethod
    def fit(cls, scaled: np.ndarray, targets: np.ndarray, config: DetectorConfig) -> ClusterModel:
        x = subsequences(scaled, fit_rows(targets, KMEANS_FIT_ROWS), config.subsequence_steps)
        k = min(config.kmeans_clusters, len(x))
        km = KMeans(n_clusters=k, n_init=2, random_state=config.seed).fit(x)
        return cls(config.subsequence_steps, km.cluster_centers_.astype(np.float64))

    def point_errors(self, scaled, targets, window):
        x = subsequences(scaled, targets, self.steps).astype(np.float64)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, nearest centroid per row
        d2 = (x * x).sum(1)[:, None] - 2.0 * x @ self.centroids.T + (self.centroids ** 2).sum(1)[None, :]
        nearest = self.centroids[np.argmin(d2, axis=1)]
        return per_feature((x - nearest) ** 2, scaled.shape[1], self.steps), None

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps, "centroids": self.centroids.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClusterModel:
        return cls(int(state["steps"]), np.asarray(state["centroids"], np.float64))


class ForestModel(ErrorModel):
    """The IsolationForest baseline (row-wise; not saved, it exists for evaluation)."""

    kind = "isolation_forest"

    def __init__(self, forest: IsolationForest) -> None:
        self.forest = forest

    @classmethod
    def fit(cls, scaled: np.ndarray, targets: np.ndarray, config: DetectorConfig) -> ForestModel:
        rows = scaled[fit_rows(targets, MAX_FIT_ROWS)]
        return cls(IsolationForest(random_state=config.seed).fit(rows))

    def point_errors(self, scaled, targets, window):
        x = scaled[targets].astype(np.float64)
        # score_samples is about -0.5 for ordinary rows; shifted so ordinary rows score ~0
        raw = np.maximum(-self.forest.score_samples(x) - 0.5, 0.0) + 1e-9
        share = x * x + 1e-12
        return raw[:, None] * share / share.sum(1, keepdims=True), None

    def state(self) -> dict[str, Any]:
        raise ArtifactError("detector kind 'isolation_forest' is the evaluation baseline and is not "
                            "saved; train kind lstm, pca, kmeans or ensemble to register a model")


class EnsembleModel(ErrorModel):
    """Members' errors in units of each member's own threshold, averaged."""

    kind = "ensemble"

    def __init__(self, members: list[ErrorModel], scales: list[float]) -> None:
        if not members or len(members) != len(scales):
            raise ValueError("an ensemble needs members, each with one scale")
        self.members, self.scales = members, [float(s) for s in scales]

    def point_errors(self, scaled, targets, window):
        total = None
        for member, scale in zip(self.members, self.scales, strict=True):
            errors, _ = member.point_errors(scaled, targets, window)
            part = errors / (scale * len(self.members))
            total = part if total is None else total + part
        return total, None

    def network(self) -> torch.nn.Module | None:
        return next((net for net in (m.network() for m in self.members) if net is not None), None)

    def to_device(self, device: torch.device) -> None:
        for member in self.members:
            member.to_device(device)

    def state(self) -> dict[str, Any]:
        return {"members": [{"kind": m.kind, "scale": s, "state": m.state()}
                            for m, s in zip(self.members, self.scales, strict=True)]}


ENSEMBLE_MEMBERS = ("lstm", "pca")
IN_PROCESS_KINDS: dict[str, Any] = {"pca": SubspaceModel, "kmeans": ClusterModel,
                                    "isolation_forest": ForestModel}


def model_from_state(kind: str, state: dict[str, Any], config: DetectorConfig, n_features: int,
                     weights: dict[str, torch.Tensor] | None) -> ErrorModel:
    """Rebuild a saved model (``weights`` from weights.pt for kinds with a network)."""
    if kind == "lstm":
        if weights is None:
            raise ValueError("kind 'lstm' needs its weights file")
        return lstm_from_weights(config, n_features, weights)
    if kind == "pca":
        return SubspaceModel.from_state(state)
    if kind == "kmeans":
        return ClusterModel.from_state(state)
    if kind == "ensemble":
        members = [model_from_state(m["kind"], m["state"], config, n_features, weights)
                   for m in state["members"]]
        return EnsembleModel(members, [m["scale"] for m in state["members"]])
    raise ValueError(f"unknown detector kind {kind!r}")
