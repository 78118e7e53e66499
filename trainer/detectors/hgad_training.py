"""HGAD's training procedure (spec ``hgad.md`` section 4, adapted in section 7): the schedule, the
batches, the two stages, the delta re-seeding and model selection on validation rows.

Pure with respect to I/O: arrays and a :class:`~.hgad_network.MixtureFlow` in, the trained
network (in place) and a summary dict out. The detector (``hgad.py``) owns hyperparameter
validation, preprocessing and calibration.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from .hgad_losses import (
    class_log_likelihoods,
    entropy_loss,
    inter_class_nll,
    intra_class_log_likelihood,
    intra_class_nll,
    mutual_information,
    saturating_likelihood_loss,
)
from .hgad_network import CHUNK_ROWS, MixtureFlow
from .hgad_preprocess import PreprocessStats, transform_preprocess

__all__ = ["TrainConfig", "balanced_nll", "claimed_log_likelihood", "init_deltas", "lr_at", "stratified_batches", "train_mixture_flow"]

#: Adam settings of the official code (spec section 4): betas (0.95, 0.99), weight decay on the
#: flow only; gradient clipping at norm 5 is the spec's recommended addition (section 7).
_BETAS = (0.95, 0.99)
_FLOW_WEIGHT_DECAY = 1e-4
_GRAD_CLIP_NORM = 5.0
#: Cosine decay floor (lr * 1e-3) and warm-up start (lr / 10), spec section 4.
_ETA_MIN_FACTOR = 1e-3
_WARMUP_START_FACTOR = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """The detector's hyperparameters that the training loop reads (validated by the detector)."""

    lambda1: float
    lambda2: float
    label_smoothing: float
    n_epochs: int
    batch_size: int
    lr: float
    stage1_fraction: float
    use_mi: bool
    use_entropy: bool
    use_intra: bool


def stratified_batches(y: npt.NDArray[np.int64], batch_size: int, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    """Shuffled row indices cut into equal batches that each hold every class in proportion.

    resolution: the spec asks for "stratified or class-balanced" batches (8.11). We stratify:
    each row gets the key (random rank within its class + U(0,1)) / class size; sorting by the key
    interleaves the classes evenly, so every batch sees each class at its training frequency.
    Batches have equal size (``array_split``), nothing is dropped.
    """
    key = np.empty(len(y))
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        key[rows] = (rng.permutation(len(rows)) + rng.random(len(rows))) / len(rows)
    order = np.argsort(key, kind="stable")
    n_batches = max(1, math.ceil(len(y) / batch_size))
    return [order[b] for b in np.array_split(np.arange(len(y)), n_batches)]


def lr_at(config: TrainConfig, epoch: int, step: int, n_steps: int, n_stage1: int) -> float:
    """Cosine per epoch (held within an epoch), linear per-step warm-up over stage 1 (spec section 4).

    resolution: the original counts the cosine in 25 meta-epochs; here one epoch plays a
    meta-epoch's role, and the warm-up window is stage 1 (``stage1_fraction`` of the epochs).
    """
    eta_min = config.lr * _ETA_MIN_FACTOR

    def cosine(e: int) -> float:
        return eta_min + (config.lr - eta_min) * (1 + math.cos(math.pi * e / config.n_epochs)) / 2

    if epoch < n_stage1:
        progress = (epoch * n_steps + step) / max(1, n_stage1 * n_steps)
        start = config.lr * _WARMUP_START_FACTOR
        return start + (cosine(n_stage1) - start) * progress
    return cosine(epoch)


def _loss(config: TrainConfig, network: MixtureFlow, x: torch.Tensor, y: torch.Tensor, is_stage2: bool) -> torch.Tensor:
    z, log_det = network.flow(x)
    loss = config.lambda1 * inter_class_nll(z, log_det, network.centres, network.logits_pi)
    if config.use_mi and config.lambda2 > 0:
        loss = loss - config.lambda2 * mutual_information(z, network.centres, network.logits_pi, y, smoothing=config.label_smoothing)
    if config.use_entropy:
        loss = loss + entropy_loss(z, network.centres)
    if is_stage2:
        if config.use_intra:
            loss = loss + intra_class_nll(z, log_det, network.centres, network.deltas, network.logits_omega, y)
        # resolution: use_intra=False keeps L_z (with the K = 1 likelihood); the ablation removes
        # the extra centres and L_intra only.
        ll = intra_class_log_likelihood(z, log_det, network.centres, network.deltas, network.logits_omega, y)
        loss = loss + saturating_likelihood_loss(ll)
    return loss


@torch.no_grad()
def init_deltas(network: MixtureFlow, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """Seed the extra centres from k-means on each class's stage-1 latents (spec section 7).

    resolution (documented deviation from the original's delta ~ N(0, I), which leaves the extra
    centres ~sqrt(D) away and dead, spec 8.3): run k-means with K clusters on the class's latents,
    give the cluster nearest the main centre to the main centre itself (mu_{y,1} = mu_y has no
    delta) and set the other K-1 deltas to centroid - mu_y. Classes with fewer than 2K rows get
    0.1 * N(0, I) deltas.
    """
    n_extra = network.deltas.shape[1]
    if n_extra == 0:
        return
    network.eval()
    z = network.latents(x).cpu().numpy()
    y_np = y.cpu().numpy()
    deltas = 0.1 * torch.randn(network.deltas.shape, generator=torch.Generator().manual_seed(seed + 1))
    centres = network.centres.detach().cpu().numpy()
    for c in range(centres.shape[0]):
        zc = z[y_np == c]
        if len(zc) < 2 * (n_extra + 1):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate latents: fewer distinct clusters is fine
            km = KMeans(n_clusters=n_extra + 1, n_init=3, random_state=seed).fit(zc)
        centroids = km.cluster_centers_
        nearest_main = np.argsort(((centroids - centres[c]) ** 2).sum(1))
        deltas[c] = torch.from_numpy(centroids[nearest_main[1:]] - centres[c]).float()
    network.deltas.data.copy_(deltas.to(network.deltas.device))


def claimed_log_likelihood(network: MixtureFlow, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ell_y(x) of each row under its own class y (chunked, no gradient)."""
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), CHUNK_ROWS):
            z, log_det = network.flow(x[i : i + CHUNK_ROWS])
            ll = class_log_likelihoods(z, log_det, network.centres, network.deltas, network.logits_omega)
            parts.append(ll.gather(1, y[i : i + CHUNK_ROWS].unsqueeze(1)).squeeze(1))
    return torch.cat(parts)


def balanced_nll(network: MixtureFlow, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over classes of the mean -ell_y of their rows (rare classes count fully)."""
    network.eval()
    ll = claimed_log_likelihood(network, x, y)
    return float(np.mean([(-ll[y == c]).mean().item() for c in torch.unique(y)]))


def train_mixture_flow(
    network: MixtureFlow,
    config: TrainConfig,
    stats: PreprocessStats,
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]],
    *,
    rng: np.random.Generator,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Train ``network`` in place on ``data = (X_tr, y_tr, X_va, y_va)``; return the training summary.

    Model selection keeps the stage-2 epoch with the lowest class-balanced validation NLL
    (spec section 7; never test AUROC as in the original). Without validation rows the last epoch
    is kept.
    """
    X_tr, y_tr, X_va, y_va = data
    is_noisy = bool(stats.is_discrete.any() or stats.n_pad)
    x_fixed = torch.from_numpy(transform_preprocess(X_tr, stats)).to(device)
    y_t = torch.from_numpy(y_tr).to(device)
    x_val = torch.from_numpy(transform_preprocess(X_va, stats)).to(device) if len(X_va) else None
    y_val = torch.from_numpy(y_va).to(device)
    mixture_params = [network.centres, network.deltas, network.logits_pi, network.logits_omega]
    optimizer = torch.optim.Adam(
        [{"params": list(network.flow.parameters()), "weight_decay": _FLOW_WEIGHT_DECAY},
         {"params": mixture_params, "weight_decay": 0.0}],
        lr=config.lr, betas=_BETAS,
    )
    # resolution: stage 1 lasts round(stage1_fraction * n_epochs) epochs, at least 1 and at most
    # n_epochs - 1, so both stages exist whenever n_epochs >= 2 (spec 8.9: count it in epochs of
    # the whole run, not as "2 epochs").
    n_stage1 = min(max(1, round(config.stage1_fraction * config.n_epochs)), max(1, config.n_epochs - 1))
    n_steps = max(1, math.ceil(len(y_tr) / config.batch_size))
    best_state: dict[str, torch.Tensor] | None = None
    best_nll, best_epoch = math.inf, config.n_epochs - 1
    val_curve: list[float] = []
    n_skipped = 0
    for epoch in range(config.n_epochs):
        if epoch == n_stage1:
            init_deltas(network, x_fixed, y_t, seed)
        is_stage2 = epoch >= n_stage1
        x_epoch = torch.from_numpy(transform_preprocess(X_tr, stats, rng=rng)).to(device) if is_noisy else x_fixed
        network.train()
        for step, rows in enumerate(stratified_batches(y_tr, config.batch_size, rng)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, epoch, step, n_steps, n_stage1)
            batch = torch.from_numpy(rows).to(device)
            loss = _loss(config, network, x_epoch[batch], y_t[batch], is_stage2)
            if not torch.isfinite(loss):
                n_skipped += 1  # spec 8.1: never let one bad batch poison the weights
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), _GRAD_CLIP_NORM)
            optimizer.step()
        if is_stage2 and x_val is not None and len(y_va):
            nll = balanced_nll(network, x_val, y_val)
            val_curve.append(round(nll, 5))
            if nll < best_nll:
                best_nll, best_epoch = nll, epoch
                best_state = copy.deepcopy(network.state_dict())
    if best_state is not None:
        network.load_state_dict(best_state)
    return {
        "n_epochs_run": config.n_epochs, "n_stage1_epochs": n_stage1, "selected_epoch": best_epoch,
        "val_nll_selected": None if math.isinf(best_nll) else round(best_nll, 5),
        "val_nll_curve": val_curve, "n_skipped_steps": n_skipped,
        "n_train": int(len(y_tr)), "n_val": int(len(y_va)),
    }
