"""Torch modules of MNP: the stacked DAE encoder/decoder, Student-t prototype similarity, scoring MLP.

Kept apart from :mod:`.mnp` so that the detector module holds the training procedure and the
public API, and this one holds only the differentiable forward pass (spec ``mnp.md`` section 3 and
6.1). Everything here is deterministic given the parameters: no randomness, no batch statistics,
so scoring can be micro-batched freely.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "DAELayer",
    "LEAKY_SLOPE",
    "MNPForward",
    "MNPNetwork",
    "SCORER_HIDDEN",
    "ScoringNet",
    "evaluating",
    "hidden_width",
    "per_feature_reconstruction",
    "student_t_similarity",
]

# Slope of every LeakyReLU in the reference model (torch's default), latent and output layers included.
LEAKY_SLOPE = 0.01
# Width of the scoring MLP's hidden layer (spec section 3: 10 -> 16 -> 1).
SCORER_HIDDEN = 16


def hidden_width(n_features: int, n_emb: int) -> int:
    """Width h1 of the encoder's first layer: about the midpoint between D and the latent size.

    Uses floor division as the spec writes it, so for D < n_emb the layer is slightly *wider*
    than D (D=6, H=8 gives h1=7), exactly as the reference code does.
    """
    return n_features - (n_features - n_emb) // 2


class DAELayer(nn.Module):
    """One greedy layer of the stacked denoising autoencoder: ``Linear+LeakyReLU`` both ways.

    Trained alone during pretraining (spec section 4), then its ``enc`` joins the encoder and its
    ``dec`` the decoder, so the stacked AE starts from the layer-wise solution.
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(n_in, n_out), nn.LeakyReLU(LEAKY_SLOPE))
        self.dec = nn.Sequential(nn.Linear(n_out, n_in), nn.LeakyReLU(LEAKY_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


class ScoringNet(nn.Module):
    """phi: ``[z_hat ; r ; s_max] -> (0, 1)``, a 2-layer MLP ending in a sigmoid (spec section 3).

    ``n_extra`` widens the input for the scaled raw features (``MNPNetwork(scorer_features=True)``).
    """

    def __init__(self, n_emb: int, n_extra: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_emb + 2 + n_extra, SCORER_HIDDEN),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(SCORER_HIDDEN, 1),
            nn.Sigmoid(),
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u).squeeze(-1)


def student_t_similarity(z_hat: torch.Tensor, c_hat: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Unnormalised Student-t kernel ``(1 + d/alpha)^(-(alpha+1)/2)`` between rows and prototypes.

    Both inputs are expected L2-normalised, so the squared distance lies in [0, 4] and, for
    alpha = 1, the similarity in [0.2, 1]. Returns shape (n, K).
    """
    # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b; clamped because rounding can make it slightly negative.
    d2 = (z_hat.pow(2).sum(1, keepdim=True) + c_hat.pow(2).sum(1)[None, :] - 2.0 * z_hat @ c_hat.T).clamp_min(0.0)
    if alpha == 1.0:
        return 1.0 / (1.0 + d2)  # the common case, one op cheaper than pow
    return (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)


def per_feature_reconstruction(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta = 1) error per feature, shape (n, D); r(x) is its mean over features."""
    return nn.functional.smooth_l1_loss(x_hat, x, reduction="none", beta=1.0)


class MNPForward(NamedTuple):
    """Everything the losses and the explanations need from one forward pass (spec 6.1)."""

    z_hat: torch.Tensor  # (n, H) L2-normalised embedding
    x_hat: torch.Tensor  # (n, D) reconstruction G(E(x)), kept for per-feature explanations
    rec: torch.Tensor  # (n,) r(x), mean Smooth-L1 reconstruction error
    sim: torch.Tensor  # (n, K) Student-t similarity to each normalised prototype
    s_max: torch.Tensor  # (n,)
    score: torch.Tensor  # (n,) phi(x) in (0, 1)


class MNPNetwork(nn.Module):
    """Encoder E, decoder G, K free prototypes and the scoring net phi, trained end to end.

    Parameters
    ----------
    n_features, n_emb, n_prototypes
        D, H and K of the spec.
    scorer_features
        Also feed the scaled raw features x to phi: ``[z_hat ; r ; s_max ; x]``. departure from the
        spec (section 3), an option: with one or two labelled anomalies the 10-number summary can
        hide the feature that tells them apart, which a DevNet-style scorer on x still sees.
    """

    def __init__(self, n_features: int, n_emb: int, n_prototypes: int, *, scorer_features: bool = False) -> None:
        super().__init__()
        self.scorer_features = scorer_features
        h1 = hidden_width(n_features, n_emb)
        self.encoder = nn.Sequential(
            nn.Linear(n_features, h1), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(h1, n_emb), nn.LeakyReLU(LEAKY_SLOPE)
        )
        self.decoder = nn.Sequential(
            nn.Linear(n_emb, h1), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(h1, n_features), nn.LeakyReLU(LEAKY_SLOPE)
        )
        self.prototypes = nn.Parameter(torch.zeros(n_prototypes, n_emb))
        self.scorer = ScoringNet(n_emb, n_features if scorer_features else 0)

    def load_stacked_dae(self, layers: list[DAELayer]) -> None:
        """Copy the two pretrained DAE layers: E = [enc_1, enc_2], G = [dec_2, dec_1]."""
        first, second = layers
        with torch.no_grad():
            self.encoder[0].load_state_dict(first.enc[0].state_dict())
            self.encoder[2].load_state_dict(second.enc[0].state_dict())
            self.decoder[0].load_state_dict(second.dec[0].state_dict())
            self.decoder[2].load_state_dict(first.dec[0].state_dict())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """G(E(x)), the plain autoencoder (used for fine-tuning with MSE)."""
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> MNPForward:
        z = self.encoder(x)
        x_hat = self.decoder(z)
        rec = per_feature_reconstruction(x, x_hat).mean(1)
        z_hat = nn.functional.normalize(z, dim=1)
        c_hat = nn.functional.normalize(self.prototypes, dim=1)
        sim = student_t_similarity(z_hat, c_hat)
        s_max = sim.max(1).values
        parts = [z_hat, rec[:, None], s_max[:, None], *([x] if self.scorer_features else [])]
        score = self.scorer(torch.cat(parts, dim=1))
        return MNPForward(z_hat=z_hat, x_hat=x_hat, rec=rec, sim=sim, s_max=s_max, score=score)


@contextlib.contextmanager
def evaluating(net: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a look at the network mid-training; the caller's mode comes back."""
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        net.train(was_training)
