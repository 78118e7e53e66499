"""DevNet (Pang, Shen and van den Hengel, KDD 2019): a scoring MLP trained with the deviation loss.

Why it is a peer: it is the canonical "few labelled anomalies + unlabelled data" detector and the
strongest DeepOD peer in ``shared/spec/mnp-reference-results.md``. The unlabelled data are
treated as normal, so contamination leaks straight into the target; MNP's ω-weighting is meant to
beat exactly that.

Simplifications vs the paper: the DeepOD-style net (hidden 100-50, ReLU) instead of the
paper's single 20-unit layer; Adam (lr 1e-3, weight decay 1e-5) instead of RMSprop with an L2
penalty on the first layer; 25 epochs instead of 50 (to fit 16 datasets x 5 seeds on 2 shared
cores; 500 steps of 512 rows is still more rows seen than DeepOD's 100 epochs on most datasets).
Kept: balanced batches of 512 (half labelled anomalies drawn with replacement), 20 batches per
epoch, 5000 N(0, 1) reference draws, margin 5.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from .base import PeerDetector, deviation_loss, make_mlp, run_capped_steps, sample_balanced

__all__ = ["DevNet"]


class DevNet(PeerDetector):
    """Deviation network; ``score`` is the raw network output (higher = more anomalous).

    Examples
    --------
    >>> from sklearn.metrics import roc_auc_score
    >>> from protoguard.benchmarks.peers.base import toy_weak_labels
    >>> X, y, semi = toy_weak_labels()
    >>> det = DevNet(n_epochs=5, batch_size=64, random_state=0).fit(X, semi)
    >>> round(roc_auc_score(y, det.score(X)), 2)
    1.0
    """

    def __init__(
        self, *, hidden: tuple[int, ...] = (100, 50), margin: float = 5.0, weight_decay: float = 1e-5,
        n_epochs: int = 25, n_steps_per_epoch: int = 20, batch_size: int = 512, lr: float = 1e-3,
        max_fit_s: float = 120.0, random_state: int | None = None,
    ) -> None:
        super().__init__(n_epochs=n_epochs, n_steps_per_epoch=n_steps_per_epoch, batch_size=batch_size, lr=lr,
                         max_fit_s=max_fit_s, random_state=random_state)
        self.hidden = hidden
        self.margin = margin
        self.weight_decay = weight_decay

    def _fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> int:
        self.net_ = make_mlp(X.shape[1], self.hidden, 1)
        optimiser = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        X_a, X_u = torch.from_numpy(X[y == 1]), torch.from_numpy(X[y == 0])

        def step(_: int) -> float:
            ia, iu = sample_balanced(self._rng, len(X_a), len(X_u), self.batch_size)
            xb = torch.cat([X_a[ia], X_u[iu]])
            yb = torch.cat([torch.ones(len(ia)), torch.zeros(len(iu))])
            loss = deviation_loss(self.net_(xb).squeeze(1), yb, margin=self.margin)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            return loss.item()

        self.net_.train()
        done = run_capped_steps(step, n_steps=self.n_steps, max_fit_s=self.max_fit_s)
        self.net_.eval()
        return done

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        return self.net_(X)
