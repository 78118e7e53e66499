"""The normalizing flow of HGAD: affine coupling blocks with a soft clamp and fixed rotations.

Spec ``hgad.md`` section 2 ("One block") describes FrEIA's ``AllInOneBlock`` as the official code
uses it. We write the block ourselves instead of depending on FrEIA because

- the project never pickles and loads weights from safetensors by tensor name, so parameter and
  buffer names must be ours and stable across library versions;
- the spec pins an *old* FrEIA clamp, ``alpha * tanh(s)``, while current FrEIA uses
  ``alpha * tanh(s / alpha)``; depending on FrEIA would silently change the model on upgrade;
- the block is ~40 lines, and owning it lets the tests check the log-det against autograd.

One block maps x (n, D) to y (n, D):

1. split x into x1 (first ceil(D/2) dims) and x2 (the rest);
2. ``a = 0.1 * subnet(x1)``; ``s, t = split(a)``; the subnet is Linear -> ReLU -> Linear;
3. ``x2 <- x2 * exp(alpha * tanh(s)) + t`` (the soft clamp bounds the log-scale by +-alpha);
4. ``y = (concat(x1, x2) * gamma + offset) @ R`` with ``gamma = 0.1 * softplus_beta=0.5(g)``
   (initialised to 1) and R a fixed random rotation from SO(D), the "soft permutation";
5. ``log|det J| = sum(alpha * tanh(s)) + sum(log gamma)`` (R has determinant 1).

The flow is unconditional: section 7 drops the positional encoding and never conditions on the
class. resolution: the optional conditioning on context features (section 7) is not implemented;
context features are scored like any other feature.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AffineCouplingBlock", "HGADFlow", "random_rotation", "subnet_width"]

#: softplus with beta = 0.5 and a 0.1 factor equals 1 at g = 2*log(e^5 - 1) (FrEIA's global-affine
#: "SOFTPLUS" init), so every block starts as the identity up to the rotation.
_GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(5.0) - 1.0)

#: FrEIA multiplies the subnet output by 0.1 so that a freshly initialised block is near identity.
_SUBNET_OUTPUT_FACTOR = 0.1


def subnet_width(n_in: int) -> int:
    """Hidden width of a coupling subnet: max(2 * input, 64), capped at 256 (spec section 7 sizes)."""
    # resolution: "input" is the subnet's input, |x1| = ceil(D/2) (the original's 2 * (|x1| + 256)
    # counts the condition, which section 7 drops).
    return min(max(2 * n_in, 64), 256)


def random_rotation(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random rotation in SO(D) (QR of a Gaussian matrix with sign fix, det = +1).

    A rotation, not a permutation: every output dimension mixes all inputs, so after a few blocks
    every coordinate has conditioned on every other one (the "soft permutation" of FrEIA).
    """
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(torch.float32)


class AffineCouplingBlock(nn.Module):
    """One HGAD/FrEIA-style coupling block; ``forward`` returns (y, log|det dy/dx|) per row."""

    def __init__(self, dim: int, *, clamp: float, generator: torch.Generator) -> None:
        super().__init__()
        self.dim = dim
        self.clamp = clamp
        self.n_cond = (dim + 1) // 2
        self.n_trans = dim - self.n_cond
        hidden = subnet_width(self.n_cond)
        self.subnet = nn.Sequential(
            nn.Linear(self.n_cond, hidden), nn.ReLU(), nn.Linear(hidden, 2 * self.n_trans)
        )
        self.global_scale = nn.Parameter(torch.full((dim,), _GLOBAL_SCALE_INIT))
        # resolution: the spec does not give the offset's init; FrEIA's is 0 (identity at start).
        self.global_offset = nn.Parameter(torch.zeros(dim))
        self.register_buffer("rotation", random_rotation(dim, generator))

    def _scale(self) -> torch.Tensor:
        return 0.1 * nn.functional.softplus(self.global_scale, beta=0.5)

    def _log_scale_and_shift(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.subnet(x1) * _SUBNET_OUTPUT_FACTOR
        s, t = a[:, : self.n_trans], a[:, self.n_trans :]
        # The pinned FrEIA clamp: alpha * tanh(s), not the newer alpha * tanh(s / alpha).
        return self.clamp * torch.tanh(s), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.n_cond], x[:, self.n_cond :]
        log_s, t = self._log_scale_and_shift(x1)
        x2 = x2 * torch.exp(log_s) + t
        gamma = self._scale()
        y = (torch.cat([x1, x2], dim=1) * gamma + self.global_offset) @ self.rotation
        log_det = log_s.sum(dim=1) + torch.log(gamma).sum()
        return y, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = (y @ self.rotation.T - self.global_offset) / self._scale()
        x1, x2 = x[:, : self.n_cond], x[:, self.n_cond :]
        log_s, t = self._log_scale_and_shift(x1)
        return torch.cat([x1, (x2 - t) * torch.exp(-log_s)], dim=1)


class HGADFlow(nn.Module):
    """A stack of :class:`AffineCouplingBlock`; x (n, D) -> (z (n, D), log|det dz/dx| (n,)).

    Parameters
    ----------
    dim : int
        D >= 2 (the detector pads to >= 4).
    n_blocks : int
        Number of coupling blocks (spec default 8 for event vectors, 12 in the original).
    clamp : float
        alpha of the soft clamp; the per-block log-scale per dimension stays within +-alpha.
    seed : int
        Seeds the fixed rotations, so the same seed gives the same (untrained) flow.
    """

    def __init__(self, dim: int, *, n_blocks: int, clamp: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList(
            AffineCouplingBlock(dim, clamp=clamp, generator=generator) for _ in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_log_det = block(x)
            log_det = log_det + block_log_det
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            z = block.inverse(z)
        return z
