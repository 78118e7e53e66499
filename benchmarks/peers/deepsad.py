"""Deep SAD (Ruff et al., ICLR 2020): a hypersphere whose centre the labelled anomalies must leave.

Why it is a peer: the one-class view of weak supervision, one centre for all normal data. MNP
generalises it to K prototypes, so Deep SAD is the natural "K = 1, no reconstruction" reference.

Loss per batch: unlabelled rows pull their embedding to the centre c (||φ(x) − c||²); labelled
anomalies pay η / (||φ(x) − c||² + ε), which pushes them out (η = 1). The network has no bias
terms (a bias lets it map everything onto c, the trivial solution the paper warns about), and c
is the mean of the initial embeddings of the unlabelled data, with coordinates too close to 0
moved to ±0.1 (the paper's guard against a collapsed centre).

Simplifications vs the paper: no autoencoder pretraining (the paper's optional warm start; the
DeepOD peer skips it too); the labelled anomalies are oversampled to 1/8 of each batch instead of
appearing at their natural 1 % rate, so each batch sees them at all.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from .base import PeerDetector, make_mlp, run_capped_steps, sample_balanced

__all__ = ["DeepSAD"]

#: Keeps the inverse-distance term finite when an anomaly sits exactly on c.
_EPS = 1e-6
#: Rows used to place the centre; more changes nothing but time on 370k-row training sets.
_N_CENTRE_ROWS = 10_000


class DeepSAD(PeerDetector):
    """Deep SAD; ``score`` is the squared distance to the centre (higher = more anomalous).

    Examples
    --------
    >>> from sklearn.metrics import roc_auc_score
    >>> from protoguard.benchmarks.peers.base import toy_weak_labels
    >>> X, y, semi = toy_weak_labels()
    >>> det = DeepSAD(n_epochs=5, batch_size=64, random_state=0).fit(X, semi)
    >>> round(roc_auc_score(y, det.score(X)), 2)
    1.0
    """

    def __init__(
        self, *, hidden: tuple[int, ...] = (100, 50), rep_dim: int = 32, eta: float = 1.0, anomaly_share: float = 0.125,
        weight_decay: float = 1e-6, n_epochs: int = 25, n_steps_per_epoch: int = 20, batch_size: int = 512,
        lr: float = 1e-3, max_fit_s: float = 120.0, random_state: int | None = None,
    ) -> None:
        super().__init__(n_epochs=n_epochs, n_steps_per_epoch=n_steps_per_epoch, batch_size=batch_size, lr=lr,
                         max_fit_s=max_fit_s, random_state=random_state)
        self.hidden = hidden
        self.rep_dim = rep_dim
        self.eta = eta
        self.anomaly_share = anomaly_share
        self.weight_decay = weight_decay

    def _fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> int:
        self.net_ = make_mlp(X.shape[1], self.hidden, self.rep_dim, bias=False)
        X_a, X_u = torch.from_numpy(X[y == 1]), torch.from_numpy(X[y == 0])
        with torch.no_grad():
            rows = self._rng.choice(len(X_u), min(len(X_u), _N_CENTRE_ROWS), replace=False)
            c = self.net_(X_u[rows]).mean(0)
            c[(c.abs() < 0.1) & (c < 0)] = -0.1
            c[(c.abs() < 0.1) & (c >= 0)] = 0.1
        self.centre_ = c
        optimiser = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        def step(_: int) -> float:
            ia, iu = sample_balanced(self._rng, len(X_a), len(X_u), self.batch_size, self.anomaly_share)
            dist = ((self.net_(torch.cat([X_a[ia], X_u[iu]])) - self.centre_) ** 2).sum(1)
            is_anomaly = torch.cat([torch.ones(len(ia)), torch.zeros(len(iu))])
            loss = torch.mean((1 - is_anomaly) * dist + is_anomaly * self.eta / (dist + _EPS))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            return loss.item()

        done = run_capped_steps(step, n_steps=self.n_steps, max_fit_s=self.max_fit_s)
        self.net_.eval()
        return done

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        return ((self.net_(X) - self.centre_) ** 2).sum(1)
