"""FEAWAD (Zhou et al., IEEE TNNLS 2021): a deviation network fed by an autoencoder's view of each row.

Why it is a peer: like MNP it pairs reconstruction with a learned scorer. An autoencoder trained
on the unlabelled data encodes each row as three factors: the hidden code h (where its projection
on the data manifold lies), the unit residual r/||r|| (the direction to that projection) and the
reconstruction error ||r|| (the distance). The scorer is an MLP on [h, r/||r||, ||r||] that appends
||r|| again to the input of every hidden layer, trained with DevNet's deviation loss.

Training: (1) pretrain the autoencoder on unlabelled rows (MSE); (2) train everything end to end
on balanced batches with deviation loss + a reconstruction term that keeps the autoencoder fitted
to the unlabelled rows and pushes the labelled anomalies' error above a margin.

Simplifications vs the paper: encoder D → 100 → 20 and scorer 256 → 32 → 1 with fixed sizes;
Adam throughout; the anomaly reconstruction margin is 5x the mean unlabelled reconstruction
error after pretraining (resolution, not from the paper: a fixed margin is meaningless when the
error scale depends on D and on the MinMax scaling).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .base import PeerDetector, deviation_loss, make_mlp, run_capped_steps, sample_balanced

__all__ = ["FEAWAD"]

#: Guards the residual's unit direction when a row is reconstructed exactly.
_EPS = 1e-8


class _ThreeFactorScorer(nn.Module):
    """MLP on [h, r/||r||, ||r||] that re-injects ||r|| before every hidden layer (the paper's design)."""

    def __init__(self, n_in: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers, width = [], n_in
        for w in widths:
            layers.append(nn.Linear(width + 1, w))
            width = w
        self.hidden = nn.ModuleList(layers)
        self.out = nn.Linear(width + 1, 1)

    def forward(self, factors: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        out = factors
        for layer in self.hidden:
            out = torch.relu(layer(torch.cat([out, error], dim=1)))
        return self.out(torch.cat([out, error], dim=1)).squeeze(1)


class FEAWAD(PeerDetector):
    """Autoencoder-encoded deviation network; ``score`` is the scorer's output (higher = more anomalous).

    Examples
    --------
    >>> from sklearn.metrics import roc_auc_score
    >>> from protoguard.benchmarks.peers.base import toy_weak_labels
    >>> X, y, semi = toy_weak_labels()
    >>> det = FEAWAD(n_epochs=5, n_pretrain_epochs=5, batch_size=64, random_state=0).fit(X, semi)
    >>> round(roc_auc_score(y, det.score(X)), 2)
    1.0
    """

    def __init__(
        self, *, hidden: tuple[int, ...] = (100,), code_dim: int = 20, scorer_widths: tuple[int, ...] = (256, 32),
        n_pretrain_epochs: int = 10, rec_margin_factor: float = 5.0, margin: float = 5.0, weight_decay: float = 1e-5,
        n_epochs: int = 25, n_steps_per_epoch: int = 20, batch_size: int = 512, lr: float = 1e-3,
        max_fit_s: float = 120.0, random_state: int | None = None,
    ) -> None:
        super().__init__(n_epochs=n_epochs, n_steps_per_epoch=n_steps_per_epoch, batch_size=batch_size, lr=lr,
                         max_fit_s=max_fit_s, random_state=random_state)
        self.hidden = hidden
        self.code_dim = code_dim
        self.scorer_widths = scorer_widths
        self.n_pretrain_epochs = n_pretrain_epochs
        self.rec_margin_factor = rec_margin_factor
        self.margin = margin
        self.weight_decay = weight_decay

    def _forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly score, per-row mean squared reconstruction error)."""
        code = torch.relu(self.encoder_(X))
        residual = X - self.decoder_(code)
        norm = residual.norm(dim=1, keepdim=True)
        factors = torch.cat([code, residual / (norm + _EPS)], dim=1)
        return self.scorer_(factors, norm), (residual ** 2).mean(1)

    def _fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> int:
        D = X.shape[1]
        self.encoder_ = make_mlp(D, self.hidden, self.code_dim)
        self.decoder_ = make_mlp(self.code_dim, tuple(reversed(self.hidden)), D)
        self.scorer_ = _ThreeFactorScorer(self.code_dim + D, self.scorer_widths)
        X_a, X_u = torch.from_numpy(X[y == 1]), torch.from_numpy(X[y == 0])
        ae_params = [*self.encoder_.parameters(), *self.decoder_.parameters()]
        ae_optimiser = torch.optim.Adam(ae_params, lr=self.lr, weight_decay=self.weight_decay)

        def pretrain_step(_: int) -> float:
            xb = X_u[self._rng.integers(0, len(X_u), self.batch_size)]
            loss = ((xb - self.decoder_(torch.relu(self.encoder_(xb)))) ** 2).mean()
            ae_optimiser.zero_grad()
            loss.backward()
            ae_optimiser.step()
            return loss.item()

        n_pre = int(self.n_pretrain_epochs) * int(self.n_steps_per_epoch)
        done = run_capped_steps(pretrain_step, n_steps=n_pre, max_fit_s=self.max_fit_s / 3)
        with torch.no_grad():
            sample = X_u[self._rng.integers(0, len(X_u), min(len(X_u), 10_000))]
            _, err = self._forward(sample)
            rec_margin = self.rec_margin_factor * float(err.mean())
        optimiser = torch.optim.Adam([*ae_params, *self.scorer_.parameters()], lr=self.lr, weight_decay=self.weight_decay)

        def step(_: int) -> float:
            ia, iu = sample_balanced(self._rng, len(X_a), len(X_u), self.batch_size)
            scores, err = self._forward(torch.cat([X_a[ia], X_u[iu]]))
            yb = torch.cat([torch.ones(len(ia)), torch.zeros(len(iu))])
            rec = torch.mean((1 - yb) * err + yb * torch.clamp(rec_margin - err, min=0.0))
            loss = deviation_loss(scores, yb, margin=self.margin) + rec
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            return loss.item()

        done += run_capped_steps(step, n_steps=self.n_steps, max_fit_s=self.max_fit_s * 2 / 3)
        for module in (self.encoder_, self.decoder_, self.scorer_):
            module.eval()
        return done

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        return self._forward(X)[0]
