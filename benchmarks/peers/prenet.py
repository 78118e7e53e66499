"""PReNet (Pang et al., KDD 2023): learn the relation of sample *pairs*, then score against anchors.

Why it is a peer: it multiplies the scarce labels by pairing them: a-a pairs regress to 8,
a-u (either order) to 4 and u-u to 0, so one labelled anomaly already yields many training
pairs. At test time a row is paired with E labelled anomalies and E unlabelled rows, and its
score is the mean predicted relation: high when it "looks like" the anomalies.

Network: a shared feature learner ψ (D → 100 → 20, ReLU) applied to both members, the two
20-d features concatenated and mapped to a relation score by a linear unit, as in the paper.
Trained with the absolute error on balanced pair batches (¼ a-a, ¼ a-u, ¼ u-a, ¼ u-u).

Simplifications vs the paper: Adam instead of RMSprop, a fixed step budget instead of the
paper's epoch schedule, E = 30 anchors drawn once per fit (the paper's ensemble size). With a
single labelled anomaly the a-a pair is that anomaly with itself (DeepOD's PReNet crashes there).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .base import PeerDetector, make_mlp, run_capped_steps

__all__ = ["PReNet"]

#: Relation targets of the paper: two anomalies, one anomaly, none.
_TARGET_AA, _TARGET_AU, _TARGET_UU = 8.0, 4.0, 0.0


class PReNet(PeerDetector):
    """Pairwise relation network; ``score`` is the mean relation to E anomaly and E unlabelled anchors.

    Examples
    --------
    >>> from sklearn.metrics import roc_auc_score
    >>> from protoguard.benchmarks.peers.base import toy_weak_labels
    >>> X, y, semi = toy_weak_labels()
    >>> det = PReNet(n_epochs=5, batch_size=64, random_state=0).fit(X, semi)
    >>> round(roc_auc_score(y, det.score(X)), 2)
    1.0
    """

    def __init__(
        self, *, hidden: tuple[int, ...] = (100,), rep_dim: int = 20, n_anchors: int = 30, weight_decay: float = 1e-5,
        n_epochs: int = 25, n_steps_per_epoch: int = 20, batch_size: int = 512, lr: float = 1e-3,
        max_fit_s: float = 120.0, random_state: int | None = None,
    ) -> None:
        super().__init__(n_epochs=n_epochs, n_steps_per_epoch=n_steps_per_epoch, batch_size=batch_size, lr=lr,
                         max_fit_s=max_fit_s, random_state=random_state)
        self.hidden = hidden
        self.rep_dim = rep_dim
        self.n_anchors = n_anchors
        self.weight_decay = weight_decay

    def _relation(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.head_(torch.cat([self.features_(left), self.features_(right)], dim=1)).squeeze(1)

    def _fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> int:
        self.features_ = nn.Sequential(make_mlp(X.shape[1], self.hidden, self.rep_dim), nn.ReLU())
        self.head_ = nn.Linear(2 * self.rep_dim, 1)
        params = [*self.features_.parameters(), *self.head_.parameters()]
        optimiser = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        X_a, X_u = torch.from_numpy(X[y == 1]), torch.from_numpy(X[y == 0])
        quarter = max(1, self.batch_size // 4)
        targets = torch.tensor([_TARGET_AA, _TARGET_AU, _TARGET_AU, _TARGET_UU]).repeat_interleave(quarter)

        def step(_: int) -> float:
            a1, a2, a3 = (X_a[self._rng.integers(0, len(X_a), quarter)] for _ in range(3))
            u1, u2, u3 = (X_u[self._rng.integers(0, len(X_u), quarter)] for _ in range(3))
            left = torch.cat([a1, a3, u1, u2])
            right = torch.cat([a2, u3, a3, u3])
            loss = (self._relation(left, right) - targets).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            return loss.item()

        done = run_capped_steps(step, n_steps=self.n_steps, max_fit_s=self.max_fit_s)
        self.features_.eval()
        self.anchors_anomaly_ = X_a[self._rng.integers(0, len(X_a), self.n_anchors)]
        self.anchors_unlabelled_ = X_u[self._rng.integers(0, len(X_u), self.n_anchors)]
        return done

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        h_x = self.features_(X)
        total = torch.zeros(len(X))
        for h_a, h_u in zip(self.features_(self.anchors_anomaly_), self.features_(self.anchors_unlabelled_)):
            total += self.head_(torch.cat([h_a.expand_as(h_x), h_x], dim=1)).squeeze(1)
            total += self.head_(torch.cat([h_x, h_u.expand_as(h_x)], dim=1)).squeeze(1)
        return total / (2 * self.n_anchors)
