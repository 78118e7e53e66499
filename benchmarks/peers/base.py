"""What every torch peer shares: the fit/score shell, a small MLP, balanced batches, a capped loop.

The peers are benchmark baselines, not product detectors: they follow the detector contract's
shape (keyword-only hyperparameters stored verbatim, ``fit(X, y) -> self``, ``score(X)`` with
higher = more anomalous) but have no ``save``/``load``. ``y`` is the weak label of the
benchmark protocol: 1 for a labelled anomaly, 0 for an unlabelled (contaminated) sample.

Every fit is bounded twice: by ``n_epochs * n_steps_per_epoch`` optimiser steps and by
``max_fit_s`` wall seconds, so one slow dataset cannot eat a 2-core benchmark. A non-finite loss
raises ``FloatingPointError`` (the harness records it as a failed row) instead of silently
producing NaN scores.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ...schemas.errors import NotFittedError

__all__ = ["PeerDetector", "deviation_loss", "make_mlp", "run_capped_steps", "sample_balanced", "toy_weak_labels"]

FloatMatrix = npt.NDArray[np.float32]

#: Rows per forward pass when scoring; keeps memory flat on the 217k-row donors test split.
_SCORE_CHUNK_ROWS = 65_536


def toy_weak_labels(seed: int = 0) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(X, truth, weak labels): 400 normals and 20 anomalies, 3 of them labelled; for doc examples.

    >>> X, y, semi = toy_weak_labels()
    >>> X.shape, int(y.sum()), int(semi.sum())
    ((420, 4), 20, 3)
    """
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0.3, 0.05, (400, 4)), rng.normal(0.8, 0.05, (20, 4))])
    y = np.r_[np.zeros(400), np.ones(20)]
    semi = np.r_[np.zeros(400), np.ones(3), np.zeros(17)]
    return X, y, semi


def make_mlp(n_in: int, hidden: Sequence[int], n_out: int, *, bias: bool = True) -> nn.Sequential:
    """Linear-ReLU stack ending in a plain Linear (no output activation: the losses decide)."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_out, bias=bias))
    return nn.Sequential(*layers)


def sample_balanced(
    rng: np.random.Generator, n_anomalies: int, n_unlabelled: int, batch_size: int, anomaly_share: float = 0.5
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions into the labelled-anomaly and unlabelled pools for one batch.

    Both are drawn with replacement: the labelled pool often holds a single anomaly, and for the
    unlabelled pool (thousands of rows) duplicates inside one batch are rare and harmless.
    """
    n_a = max(1, int(round(batch_size * anomaly_share)))
    return rng.integers(0, n_anomalies, n_a), rng.integers(0, n_unlabelled, batch_size - n_a)


def deviation_loss(scores: torch.Tensor, y: torch.Tensor, *, margin: float = 5.0, n_ref: int = 5000) -> torch.Tensor:
    """DevNet's deviation loss (Pang et al. 2019): z-score against a N(0, 1) reference prior.

    Unlabelled scores are pulled to the prior mean (|dev|); labelled anomalies are pushed at least
    ``margin`` standard deviations above it. The ``n_ref`` reference draws are fresh per batch.
    """
    ref = torch.randn(n_ref)
    dev = (scores - ref.mean()) / ref.std()
    return torch.mean((1.0 - y) * dev.abs() + y * torch.clamp(margin - dev, min=0.0))


def run_capped_steps(step: Callable[[int], float], *, n_steps: int, max_fit_s: float) -> int:
    """Call ``step(i)`` up to ``n_steps`` times or until ``max_fit_s`` passed; return steps done."""
    start = time.perf_counter()
    done = 0
    for i in range(n_steps):
        loss = step(i)
        done = i + 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {i}; the scores would be meaningless")
        if time.perf_counter() - start > max_fit_s:
            break
    return done


class PeerDetector:
    """The fit/score shell; subclasses implement ``_fit(X, y)`` and ``_score(X)``.

    Parameters
    ----------
    n_epochs, n_steps_per_epoch : int
        Training length in optimiser steps (an "epoch" is a fixed number of sampled batches, as in
        DevNet's reference code, so big datasets cost the same as small ones). The default 25 x 20
        steps of 512 rows keeps a deep peer's fit at a few seconds on one CPU thread.
    batch_size : int
        Rows per batch (labelled anomalies and unlabelled samples together).
    lr : float
        Adam learning rate.
    max_fit_s : float
        Wall-clock cap of one fit; training stops early (not an error) when it is reached.
    random_state : int or None
        Seeds numpy and torch (reproducible on CPU with one thread).

    Attributes
    ----------
    n_features_in_ : int
    n_steps_done_ : int
        Optimiser steps actually taken (less than planned when ``max_fit_s`` cut the fit).
    """

    def __init__(
        self, *, n_epochs: int = 25, n_steps_per_epoch: int = 20, batch_size: int = 512, lr: float = 1e-3,
        max_fit_s: float = 120.0, random_state: int | None = None,
    ) -> None:
        self.n_epochs = n_epochs
        self.n_steps_per_epoch = n_steps_per_epoch
        self.batch_size = batch_size
        self.lr = lr
        self.max_fit_s = max_fit_s
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    @property
    def n_steps(self) -> int:
        return int(self.n_epochs) * int(self.n_steps_per_epoch)

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> Self:
        """Train on ``X`` with weak labels ``y`` (1 = labelled anomaly, 0 = unlabelled)."""
        X_arr = np.asarray(X, dtype=np.float32)
        y_arr = np.asarray(y).astype(np.int64).ravel()
        if X_arr.ndim != 2 or len(X_arr) != len(y_arr):
            raise ValueError(f"X must be 2-D with one label per row; got X {X_arr.shape} and y {y_arr.shape}")
        if not (y_arr == 1).any() or not (y_arr == 0).any():
            raise ValueError(
                f"{type(self).__name__} needs at least one labelled anomaly (y == 1) and one unlabelled row (y == 0); "
                f"got {(y_arr == 1).sum()} and {(y_arr == 0).sum()}"
            )
        seed = 0 if self.random_state is None else int(self.random_state)
        torch.manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self.n_features_in_ = X_arr.shape[1]
        self.n_steps_done_ = self._fit(X_arr, y_arr)
        return self

    def score(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Anomaly score per row, **higher = more anomalous**."""
        if getattr(self, "n_features_in_", None) is None:
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call fit(X, y) first.")
        X_arr = np.asarray(X, dtype=np.float32)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(X_arr), _SCORE_CHUNK_ROWS):
                chunk = torch.from_numpy(X_arr[start:start + _SCORE_CHUNK_ROWS])
                parts.append(self._score(chunk).reshape(-1).double().numpy())
        return np.concatenate(parts) if parts else np.zeros(0)

    def _fit(self, X: FloatMatrix, y: npt.NDArray[np.int64]) -> int:
        raise NotImplementedError

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
