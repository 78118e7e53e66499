"""RoSAS (Xu et al., Information Processing & Management 2023): continuous targets from mass interpolation.

Why it is a peer: its stated goal is MNP's, resilience to anomaly contamination of the unlabelled
data, by a different route. Discrete 0/1 targets are replaced by continuous "abnormal degrees":
new rows are convex mixtures of labelled anomalies (degree +1) and unlabelled rows (degree −1),
each labelled with the same mixture of degrees. Regressing those soft targets spreads the scarce
anomaly signal over the space between anomalies and data and covers the contaminated region with
rows whose labels are correct by construction. A feature-space ranking term regularises the
encoder: an unlabelled row's embedding must lie closer to another unlabelled row than to a
labelled anomaly by a margin.

Simplifications vs the paper (say so when quoting the numbers): mixtures of k = 3 rows with
Dirichlet(1) weights, members drawn half from the labelled anomalies and half from the unlabelled
rows; a plain triplet margin loss (margin 1, weight 1) as the feature-learning objective; no
separate perturbation-consistency term; the DeepOD-style 100-50 encoder with a linear score head;
a fixed step budget instead of the paper's epochs.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .base import PeerDetector, make_mlp, run_capped_steps, sample_balanced

__all__ = ["RoSAS"]


class RoSAS(PeerDetector):
    """Mass-interpolation regressor with a ranking regulariser; ``score`` is the predicted degree.

    Examples
    --------
    >>> from sklearn.metrics import roc_auc_score
    >>> from protoguard.benchmarks.peers.base import toy_weak_labels
    >>> X, y, semi = toy_weak_labels()
    >>> det = RoSAS(n_epochs=5, batch_size=64, random_state=0).fit(X, semi)
    >>> round(roc_auc_score(y, det.score(X)), 2)
    1.0
    """

    def __init__(
        self, *, hidden: tuple[int, ...] = (100,), rep_dim: int = 50, n_mix: int = 3, ranking_margin: float = 1.0,
        ranking_weight: float = 1.0, weight_decay: float = 1e-5, n_epochs: int = 25, n_steps_per_epoch: int = 20,
        batch_size: int = 512, lr: float = 1e-3, max_fit_s: float = 120.0, random_state: int | None = None,
    ) -> None:
        super().__init__(n_epochs=n_epochs, n_steps_per_epoch=n_steps_per_epoch, batch_size=batch_size, lr=lr,
                         max_fit_s=max_fit_s, random_state=random_state)
        self.hidden = hidden
        self.rep_dim = rep_dim
        self.n_mix = n_mix
        self.ranking_margin = ranking_margin
        self.ranking_weight = ranking_weight
        self.weight_decay = weight_decay

    def _mixtures(self, X_a: torch.Tensor, X_u: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_rows`` convex mixtures of ``n_mix`` rows each, and their mixed degrees (+1 anomaly, −1 unlabelled)."""
        is_anomaly = self._rng.random((n_rows, self.n_mix)) < 0.5
        members = torch.where(
            torch.from_numpy(is_anomaly)[..., None],
            X_a[self._rng.integers(0, len(X_a), (n_rows, self.n_mix))],
            X_u[self._rng.integers(0, len(X_u), (n_rows, self.n_mix))],
        )
        weights = torch.from_numpy(self._rng.dirichlet(np.ones(self.n_mix), n_rows).astype(np.float32))
        degrees = torch.from_numpy(np.where(is_anomaly, 1.0, -1.0).astype(np.float32))
        return (weights[..., None] * members).sum(1), (weights * degrees).sum(1)

    def _fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> int:
        self.encoder_ = nn.Sequential(make_mlp(X.shape[1], self.hidden, self.rep_dim), nn.ReLU())
        self.head_ = nn.Linear(self.rep_dim, 1)
        params = [*self.encoder_.parameters(), *self.head_.parameters()]
        optimiser = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        X_a, X_u = torch.from_numpy(X[y == 1]), torch.from_numpy(X[y == 0])
        half = max(2, self.batch_size // 2)

        def step(_: int) -> float:
            ia, iu = sample_balanced(self._rng, len(X_a), len(X_u), half)
            x_mix, d_mix = self._mixtures(X_a, X_u, half)
            xb = torch.cat([X_a[ia], X_u[iu], x_mix])
            target = torch.cat([torch.ones(len(ia)), -torch.ones(len(iu)), d_mix])
            emb = self.encoder_(xb)
            regression = nn.functional.smooth_l1_loss(self.head_(emb).squeeze(1), target)
            e_a, e_u = emb[: len(ia)], emb[len(ia): len(ia) + len(iu)]
            n = min(len(e_a), len(e_u) // 2)
            anchor, positive = e_u[:n], e_u[n: 2 * n]
            ranking = nn.functional.triplet_margin_loss(anchor, positive, e_a[:n], margin=self.ranking_margin)
            loss = regression + self.ranking_weight * ranking
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            return loss.item()

        done = run_capped_steps(step, n_steps=self.n_steps, max_fit_s=self.max_fit_s)
        self.encoder_.eval()
        return done

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        return self.head_(self.encoder_(X))
