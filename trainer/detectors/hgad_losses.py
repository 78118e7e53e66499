"""HGAD's loss terms as pure torch functions (spec ``hgad.md`` section 3).

Every function takes latents ``z`` (n, D), the flow's ``log_det`` (n,) where needed, and the
mixture parameters, and returns a scalar averaged over the batch (or, for the likelihoods, a
per-row tensor). Nothing here holds state, so each term can be tested against a hand computation.

Signs follow the spec: the *training objective* is

    stage 1:  lambda1 * L_g - lambda2 * L_mi + L_e
    stage 2:  lambda1 * L_g - lambda2 * L_mi + L_e + L_intra + L_z

so :func:`mutual_information` returns the quantity to *maximise* and the caller subtracts it.

Stop-gradients (the "what trains what" table of section 3): the inter-class weights ``pi`` are
trained by L_g only, so L_mi detaches them; the main centres are trained by L_g, L_mi and L_e only,
so the intra-class terms detach them and only the deltas, the intra weights ``omega`` and the flow
learn from L_intra and L_z.

Squared distances are computed directly as ``((z - mu) ** 2).sum(-1)`` during training (spec 8.1:
the expanded form needs a clamp and loses precision); :func:`squared_distances` switches to the
clamped expanded form only under ``torch.no_grad`` / inference, where it saves memory.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = [
    "class_log_likelihoods",
    "entropy_loss",
    "inter_class_nll",
    "intra_centres",
    "intra_class_log_likelihood",
    "intra_class_nll",
    "mutual_information",
    "saturating_likelihood_loss",
    "smoothed_one_hot",
    "squared_distances",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def squared_distances(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``||z_i - c_j||^2`` for z (n, D) and centres (..., D) -> (n, ...).

    Direct differences when gradients flow (exact, stable); the expanded form
    ``|z|^2 + |c|^2 - 2 z.c`` clamped at 0 otherwise (no (n, ..., D) temporary).
    """
    flat = centres.reshape(-1, centres.shape[-1])
    if torch.is_grad_enabled() and (z.requires_grad or flat.requires_grad):
        d = (z.unsqueeze(1) - flat.unsqueeze(0)).pow(2).sum(-1)
    else:
        d = (z.pow(2).sum(1, keepdim=True) + flat.pow(2).sum(1).unsqueeze(0) - 2.0 * z @ flat.T).clamp_min(0.0)
    return d.reshape(z.shape[0], *centres.shape[:-1])


def smoothed_one_hot(y: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    """``(1 - eps) * onehot(y) + eps / Y`` (label smoothing as in the official code)."""
    return F.one_hot(y, n_classes).to(torch.float32) * (1.0 - smoothing) + smoothing / n_classes


def inter_class_nll(z: torch.Tensor, log_det: torch.Tensor, centres: torch.Tensor, logits_pi: torch.Tensor) -> torch.Tensor:
    """L_g (paper Eq. 6): ``-(1/D) [LSE_y(log pi_y - d_y / 2) + log_det]``, batch mean.

    The -D/2 log 2 pi constant is dropped, as in the code; the sample's label is not used.
    """
    dim = z.shape[1]
    log_pi = F.log_softmax(logits_pi, dim=0)
    log_mix = torch.logsumexp(log_pi.unsqueeze(0) - 0.5 * squared_distances(z, centres), dim=1)
    return (-(log_mix + log_det) / dim).mean()


def mutual_information(
    z: torch.Tensor, centres: torch.Tensor, logits_pi: torch.Tensor, y: torch.Tensor, *, smoothing: float
) -> torch.Tensor:
    """L_mi (paper Eq. 8), to be **maximised**: ``sum_c ytilde_c [log p(c|z) - log sg(pi_c)]``, batch mean.

    ``p(c|z) = softmax_c(log pi_c - d_c / 2)``. resolution: the spec writes sg only on the second
    ``pi``, but its table says the inter weights are trained by L_g only; we detach ``pi`` inside
    the posterior as well, so L_mi moves the flow and the centres, never the class weights.
    """
    log_pi = F.log_softmax(logits_pi, dim=0).detach()
    log_post = F.log_softmax(log_pi.unsqueeze(0) - 0.5 * squared_distances(z, centres), dim=1)
    target = smoothed_one_hot(y, centres.shape[0], smoothing)
    return (target * (log_post - log_pi.unsqueeze(0))).sum(1).mean()


def entropy_loss(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """L_e (paper Eq. 9), minimised: entropy of the prior-free posterior ``softmax_y(-d_y / 2)``."""
    log_q = F.log_softmax(-0.5 * squared_distances(z, centres), dim=1)
    return -(log_q.exp() * log_q).sum(1).mean()


def intra_centres(centres: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Intra-class centres (Y, K, D): ``mu_{y,1} = sg(mu_y)``, ``mu_{y,k} = sg(mu_y) + delta_{y,k-1}``.

    ``deltas`` is (Y, K-1, D); with K = 1 it is (Y, 0, D) and only the main centre remains.
    """
    # resolution: the spec writes mu_{y,1} = mu_y without sg, but its table says main centres are
    # trained by L_g, L_mi and L_e only; the first intra centre is therefore detached as well.
    main = centres.detach().unsqueeze(1)
    return torch.cat([main, main + deltas], dim=1)


def intra_class_log_likelihood(
    z: torch.Tensor,
    log_det: torch.Tensor,
    centres: torch.Tensor,
    deltas: torch.Tensor,
    logits_omega: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """Per-row, per-dimension class-conditional log-likelihood ell (spec section 3 L_z and section 5).

    ``ell = (1/D) [-(D/2) log 2 pi + LSE_k(log omega_{y,k} - d_{y,k} / 2) + log_det]``, no ``pi``.
    """
    dim = z.shape[1]
    mus = intra_centres(centres, deltas)[y]  # (n, K, D)
    d = (z.unsqueeze(1) - mus).pow(2).sum(-1)
    log_omega = F.log_softmax(logits_omega, dim=1)[y]
    return torch.logsumexp(log_omega - 0.5 * d, dim=1) / dim + log_det / dim - _HALF_LOG_2PI


def intra_class_nll(
    z: torch.Tensor,
    log_det: torch.Tensor,
    centres: torch.Tensor,
    deltas: torch.Tensor,
    logits_omega: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """L_intra (stage 2): ``-(1/D) [LSE_k(log omega_{y,k} - d_{y,k} / 2) + log_det]``, batch mean.

    The same as ``-ell`` without the constant; the main centre is detached (see :func:`intra_centres`).
    """
    return -(intra_class_log_likelihood(z, log_det, centres, deltas, logits_omega, y) + _HALF_LOG_2PI).mean()


def saturating_likelihood_loss(log_likelihood: torch.Tensor) -> torch.Tensor:
    """L_z (code-only, stage 2): ``-log sigmoid(ell) = softplus(-ell)``, batch mean.

    An NLL while ell << 0 that fades once ell > 0, so well-fitted rows stop pulling the flow.
    """
    return F.softplus(-log_likelihood).mean()


@torch.no_grad()
def class_log_likelihoods(
    z: torch.Tensor, log_det: torch.Tensor, centres: torch.Tensor, deltas: torch.Tensor, logits_omega: torch.Tensor
) -> torch.Tensor:
    """ell_y for every class y at once (n, Y): the scoring-time form of :func:`intra_class_log_likelihood`."""
    dim = z.shape[1]
    mus = intra_centres(centres, deltas)  # (Y, K, D)
    d = squared_distances(z, mus)  # (n, Y, K)
    log_omega = F.log_softmax(logits_omega, dim=1).unsqueeze(0)
    return torch.logsumexp(log_omega - 0.5 * d, dim=2) / dim + (log_det / dim - _HALF_LOG_2PI).unsqueeze(1)
