"""The losses of MNP as pure torch functions (spec ``mnp.md`` sections 6.3 to 6.7).

Each function takes a ``detach`` (or ``weighted``) switch so one code path serves both variants:
``faithful`` keeps the reference code's behaviour (nothing detached, spec Q3; the score loss's
weighting a broadcasting no-op, Q2; the DEC KL summed over the batch, Q4) and ``fixed`` detaches
the likelihood weights, the DEC target and the DWA coefficients and really weights the score loss.

Examples
--------
>>> import torch
>>> s_max = torch.tensor([0.2, 0.6, 1.0])
>>> w = likelihood_weights(s_max, beta=1.0)
>>> print(f"{float(w.mean()):.3f} {float(w.max() / w.min()):.3f}")
1.000 1.330
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = [
    "dec_target",
    "dwa_combine",
    "dwa_weights",
    "kl_clustering_loss",
    "likelihood_weights",
    "prototype_loss",
    "reconstruction_loss",
    "renormalised_weights",
    "score_loss",
]


def likelihood_weights(
    s_max: torch.Tensor,
    beta: float,
    *,
    fixed_mask: torch.Tensor | None = None,
    enabled: bool = True,
    detach: bool = False,
) -> torch.Tensor:
    """omega_i = |U| sigmoid(beta s_max_i) / sum_j sigmoid(beta s_max_j): batch mean exactly 1.

    Parameters
    ----------
    s_max
        (n,) highest prototype similarity of each unlabelled row.
    fixed_mask
        (n,) bool, rows whose weight is pinned to 1 (analyst-confirmed normals). The other rows
        are renormalised among themselves, so the batch mean stays 1.
    enabled
        False gives all-ones weights (the "no likelihood weighting" ablation).
    detach
        True (fixed variant) treats the weights as constants, as importance weights usually are;
        False (faithful) lets gradients flow through them (spec Q3).
    """
    if not enabled:
        return torch.ones_like(s_max)
    raw = torch.sigmoid(beta * s_max)
    if detach:
        raw = raw.detach()
    return renormalised_weights(raw, fixed_mask)


def renormalised_weights(raw: torch.Tensor, fixed_mask: torch.Tensor | None = None) -> torch.Tensor:
    """omega_i = n * raw_i / sum_j raw_j over the free rows; rows in ``fixed_mask`` get exactly 1.

    Shared by every weighting rule (:mod:`.mnp_weighting`): the rule sets the raw weights, this
    sets their scale, so that each loss term keeps its magnitude whatever the rule.
    """
    if fixed_mask is None or not bool(fixed_mask.any()):
        return raw * (raw.numel() / raw.sum().clamp_min(1e-12))
    free = ~fixed_mask
    n_free = int(free.sum())
    if n_free == 0:
        return torch.ones_like(raw)
    # resolution: confirmed normals are an extension (spec 13); they get weight 1 and the unconfirmed
    # rows are renormalised to mean 1 among themselves, so the two groups share one scale.
    free_raw = torch.where(free, raw, torch.zeros_like(raw))
    scaled = free_raw * (n_free / free_raw.sum().clamp_min(1e-12))
    return torch.where(free, scaled, torch.ones_like(raw))


def reconstruction_loss(
    rec_unlabelled: torch.Tensor, rec_anomalies: torch.Tensor, omega: torch.Tensor, margin: float
) -> torch.Tensor:
    """L_rec = weighted mean r(U) + mean hinge(margin + that mean - r(a)) over labelled anomalies.

    The hinge pushes every labelled anomaly's reconstruction error above the (weighted) unlabelled
    mean by ``margin``; the unlabelled mean is not detached inside it, in both variants (spec 6.4).
    """
    rec_u = (omega * rec_unlabelled).mean()
    if rec_anomalies.numel() == 0:
        return rec_u
    rec_a = F.relu(margin + rec_u - rec_anomalies).mean()
    return rec_u + rec_a


def score_loss(
    score_unlabelled: torch.Tensor, score_anomalies: torch.Tensor, omega: torch.Tensor, *, weighted: bool
) -> torch.Tensor:
    """Smooth-L1 regression of phi to 1 on labelled anomalies and to 0 on unlabelled rows.

    ``weighted=False`` is the reference code's behaviour: its ``[N,1] * [N]`` broadcast makes the
    omega-weighted mean equal the plain mean (spec Q2). ``weighted=True`` applies omega per row.
    """
    per_row = F.smooth_l1_loss(score_unlabelled, torch.zeros_like(score_unlabelled), reduction="none", beta=1.0)
    loss_u = (omega * per_row).mean() if weighted else per_row.mean()
    if score_anomalies.numel() == 0:
        return loss_u
    loss_a = F.smooth_l1_loss(score_anomalies, torch.ones_like(score_anomalies), beta=1.0)
    return loss_a + loss_u


def dec_target(q: torch.Tensor, *, detach: bool) -> torch.Tensor:
    """DEC's sharpened target p_ik = (q_ik^2 / f_k) / sum_k' (q_ik'^2 / f_k'), rows summing to 1.

    Original DEC holds P fixed; the reference code recomputes it per batch with gradients
    attached (spec 6.6, Q3). ``detach=True`` restores DEC's intent.
    """
    if detach:
        q = q.detach()
    weight = q.pow(2) / q.sum(0, keepdim=True)
    return weight / weight.sum(1, keepdim=True)


def kl_clustering_loss(sim: torch.Tensor, *, detach_target: bool, reduction: str = "sum") -> torch.Tensor:
    """KL(P || Q) of DEC on the unlabelled batch, Q the row-normalised similarities.

    ``reduction="sum"`` sums over the batch as the reference does (about 128x the mean, spec Q4).
    """
    q = sim / sim.sum(1, keepdim=True)
    p = dec_target(q, detach=detach_target)
    kl = (p * (torch.log(p) - torch.log(q))).sum(1)
    return kl.sum() if reduction == "sum" else kl.mean()


def prototype_loss(
    s_max_unlabelled: torch.Tensor,
    s_max_anomalies: torch.Tensor,
    sim_unlabelled: torch.Tensor,
    omega: torch.Tensor,
    *,
    lambda_kl: float,
    detach_target: bool,
    kl_reduction: str = "sum",
) -> torch.Tensor:
    """L_proto = softplus(S_A - S_U) + lambda_kl KL(P || Q): anomalies far, normals near a prototype.

    S_A is the mean s_max of labelled anomalies, S_U the omega-weighted mean s_max of unlabelled rows.
    ``kl_reduction`` is ``"sum"`` over the batch as the reference (spec Q4) or ``"mean"`` per row.
    """
    s_u = (omega * s_max_unlabelled).mean()
    # resolution: with no labelled anomaly in the batch the contrastive term compares with S_A = 0.
    s_a = s_max_anomalies.mean() if s_max_anomalies.numel() else s_u.new_zeros(())
    contrastive = F.softplus(s_a - s_u)
    return contrastive + lambda_kl * kl_clustering_loss(sim_unlabelled, detach_target=detach_target, reduction=kl_reduction)


def dwa_weights(
    losses: torch.Tensor, previous_means: torch.Tensor, temperature: float, *, detach: bool, stable: bool = False
) -> torch.Tensor:
    """kappa_m / sum kappa, kappa_m = exp(L_m / (T Lbar_m)); sums to 1 (spec 6.7).

    Differs from canonical DWA as the reference does: the current batch loss over the previous
    epoch's mean, weights summing to 1, and (faithful) kappa not detached. A previous mean of
    exactly 0 gives kappa = 0.

    ``stable=False`` exponentiates as the reference does, so a batch loss ~90x its previous epoch
    mean overflows float32 to inf and the total becomes NaN (the reference then stops on NaN
    validation scores). resolution: ``stable=True`` (fixed variant) computes the same ratio as a
    softmax, which cannot overflow.
    """
    values = losses.detach() if detach else losses
    is_zero = previous_means == 0
    logits = values / (temperature * torch.where(is_zero, torch.ones_like(previous_means), previous_means))
    if stable:
        return torch.softmax(logits.masked_fill(is_zero, float("-inf")), dim=0)
    kappa = torch.where(is_zero, torch.zeros_like(logits), torch.exp(logits))
    return kappa / kappa.sum()


def dwa_combine(
    losses: torch.Tensor, previous_means: torch.Tensor, temperature: float, *, detach: bool, stable: bool = False
) -> torch.Tensor:
    """The balanced total loss sum_m w_m L_m with the DWA weights of :func:`dwa_weights`."""
    return (dwa_weights(losses, previous_means, temperature, detach=detach, stable=stable) * losses).sum()
