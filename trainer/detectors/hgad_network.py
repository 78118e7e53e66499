"""HGAD's learnable state (flow + hierarchical mixture) and where its main centres start.

Two initialisations of the main (inter-class) centres:

- ``"onehot"``: the original's repeated scaled one-hot, every pair 5 apart (spec section 3), or
  i.i.d. N(0, sigma^2 I) when the one-hot pattern collapses (Y > D/2, spec 8.2). These centres sit
  far from where the initial flow puts the data, so with lambda2 = 100 the flow is first trained
  as a classifier that moves each class to an arbitrary point (issue 15's diagnosis).
- ``"data"`` (issue 15's fix, the default): the class means of the training rows pushed through
  the *initial* flow. The likelihood terms then start from centres the data already sits around,
  and the MI term only has to separate classes that overlap, not transport them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .hgad_flow import HGADFlow

__all__ = ["CENTRE_DISTANCE", "CHUNK_ROWS", "MixtureFlow", "data_main_centres", "init_main_centres"]

#: Distance between main centres in the original init (spec section 3).
CENTRE_DISTANCE = 5.0
#: Rows per forward pass when pushing a whole training set through the flow (bounds memory).
CHUNK_ROWS = 8192


class MixtureFlow(nn.Module):
    """The learnable state in one module: flow, main centres, deltas, inter and intra logits."""

    def __init__(self, dim: int, n_classes: int, n_centres: int, *, n_blocks: int, clamp: float, seed: int) -> None:
        super().__init__()
        self.flow = HGADFlow(dim, n_blocks=n_blocks, clamp=clamp, seed=seed)
        self.centres = nn.Parameter(torch.zeros(n_classes, dim))
        self.deltas = nn.Parameter(torch.zeros(n_classes, n_centres - 1, dim))
        self.logits_pi = nn.Parameter(torch.zeros(n_classes))
        self.logits_omega = nn.Parameter(torch.zeros(n_classes, n_centres))

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """z for every row of ``x``, chunked (no gradient)."""
        return torch.cat([self.flow(x[i : i + CHUNK_ROWS])[0] for i in range(0, len(x), CHUNK_ROWS)])


def init_main_centres(n_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Main centres about 5 apart (spec section 7 "Initialisation").

    The original's repeated scaled one-hot when Y <= D/2; otherwise i.i.d. N(0, sigma^2 I) with
    sigma = 5 / sqrt(2D), because the one-hot pattern gives all-zero centres once Y > D (spec 8.2).
    """
    # resolution: "Y <= D/2" is read as Y <= floor(D/2), which keeps floor(D/Y) >= 2 repeats.
    if n_classes <= dim // 2:
        value = CENTRE_DISTANCE / math.sqrt((2 * dim) // n_classes)
        centres = torch.zeros(n_classes, dim)
        for y in range(n_classes):
            centres[y, y : n_classes * (dim // n_classes) : n_classes] = value
        return centres
    sigma = CENTRE_DISTANCE / math.sqrt(2 * dim)
    return torch.randn(n_classes, dim, generator=generator) * sigma


@torch.no_grad()
def data_main_centres(network: MixtureFlow, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class means of the training rows pushed through the network's current (initial) flow.

    resolution: issue 15 allows "class means of the stage-1 latents, or of the inputs pushed
    through the initial flow"; we take the latter, so the centres exist before the first step and
    stage 1 (the warm-up) trains flow and centres together from a consistent start. Two classes
    with identical means get identical centres; L_mi separates them if lambda2 > 0.
    """
    was_training = network.training
    network.eval()
    z = network.latents(x)
    network.train(was_training)
    n_classes = network.centres.shape[0]
    sums = torch.zeros(n_classes, z.shape[1], device=z.device).index_add_(0, y, z)
    counts = torch.bincount(y, minlength=n_classes).clamp_min(1).unsqueeze(1).to(z.dtype)
    return sums / counts
