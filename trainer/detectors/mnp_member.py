"""One member of an MNP ensemble, fitted from scratch or from a warm start.

Why a module of its own: the estimator (:mod:`.mnp`) owns inputs, scaling, members and scoring; a
member's fit is a procedure over scaled rows (hold-outs, pretraining, prototypes, the optional pool
screen, the joint stage) that reads a fixed set of hyperparameters, gathered in ``MemberRecipe``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .base import FloatMatrix
from .mnp_holdout import HoldOut, split_holdouts
from .mnp_network import MNPNetwork
from .mnp_prototypes import choose_prototypes, normal_embeddings, reweighted_prototypes
from .mnp_screening import screen_by_score, screen_pool
from .mnp_training import JointStopping, TrainingConfig, estimate_rule, pretrain, train_joint
from .mnp_weighting import MIN_ANOMALIES_FOR_ESTIMATE

__all__ = ["MemberRecipe", "fit_member"]


@dataclass(frozen=True)
class MemberRecipe:
    """The hyperparameters a member's fit reads (``MNPDetector``'s, with the scorer's inputs resolved
    for this fit's label count)."""

    config: TrainingConfig
    variant: str
    validation: str
    joint_stopping: str
    max_epochs: int
    single_label_epochs: int
    single_label_joint_lr: float | None
    holdout_refit: bool
    screen_pool: bool
    screen_by: str
    weighted_prototypes: bool
    n_emb: int
    scorer_features: bool


def fit_member(recipe: MemberRecipe, anomalies: FloatMatrix, unlabelled: FloatMatrix, normals: FloatMatrix,
               val: tuple[FloatMatrix, npt.NDArray[np.int64]] | None, warm_start: MNPNetwork | None,
               rng: np.random.Generator, seed: int, device: torch.device, n_prototypes: int | None,
               ) -> tuple[MNPNetwork, dict[str, Any], list[dict[str, float]]]:
    """One whole MNP fit on scaled rows: hold-outs, pretraining, prototypes, joint training.

    Returns the network, its training summary and the joint stage's per-epoch history."""
    split = split_holdouts(anomalies, unlabelled, val, recipe.validation,
                           recipe.joint_stopping in ("auto", "holdout"), rng)
    anomalies, unlabelled = split.anomalies, split.unlabelled
    pool = np.vstack([unlabelled, normals])
    confirmed = np.r_[np.zeros(len(unlabelled), bool), np.ones(len(normals), bool)]
    pool_t = torch.from_numpy(pool).to(device)
    anomalies_t, confirmed_t = torch.from_numpy(anomalies).to(device), torch.from_numpy(confirmed).to(device)
    summary: dict[str, Any] = {
        "variant": recipe.variant, "validation": recipe.validation, "n_labelled": int(len(anomalies)),
        "n_unlabelled": int(len(unlabelled)), "n_confirmed_normal": int(len(normals)),
        "early_stopping": split.stop_X is not None, "warm_start": warm_start is not None,
    }
    schedule = _joint_schedule(recipe, val is not None, split.stop_X is not None)
    pre_val_t = _on_device(split.pretrain_val, device)
    if warm_start is not None:
        net = copy.deepcopy(warm_start).to(device)
    else:
        net = _initial_network(recipe, anomalies_t, pool_t, confirmed_t, pre_val_t, rng, seed, n_prototypes, summary)
        if recipe.screen_pool and val is None and len(anomalies) >= MIN_ANOMALIES_FOR_ESTIMATE:
            net, pool_t, confirmed_t, split = _screened_network(recipe, net, anomalies_t, pool_t, confirmed_t, split,
                                                                rng, seed, n_prototypes, schedule, summary)
    config, n_epochs, stopping = schedule
    start = copy.deepcopy(net) if recipe.holdout_refit and split.held_anomalies is not None else None
    joint, history, _ = train_joint(config, net, anomalies_t, pool_t, confirmed_t, split.stop_X, split.stop_y, rng,
                                    n_epochs, stopping)
    if start is not None and split.held_anomalies is not None and joint["best_epoch"] >= 1:
        # departure (issue 12, round 13): the hold-out only chooses the epoch count; the member is
        # then trained again from the same start, that many epochs, on every labelled anomaly.
        every = torch.from_numpy(np.vstack([anomalies, split.held_anomalies])).to(device)
        refit, _, _ = train_joint(dataclasses.replace(config, tail_average=0.0), start, every, pool_t, confirmed_t,
                                  None, None, rng, int(joint["best_epoch"]), "fixed")
        net = start
        joint["refit"] = {"epochs": int(joint["best_epoch"]), "n_labelled": len(every)}
        joint["likelihood_rule"], joint["final_losses"] = refit["likelihood_rule"], refit["final_losses"]
    summary.update(joint)
    summary["n_prototypes"] = int(net.prototypes.shape[0])
    return net, summary, history


def _joint_schedule(recipe: MemberRecipe, has_val: bool, has_holdout: bool,
                    ) -> tuple[TrainingConfig, int, JointStopping]:
    """The joint stage's config, epoch budget and stopping for a member with or without a hold-out."""
    config, frugal = recipe.config, not has_val and recipe.validation == "frugal"
    if frugal and recipe.joint_stopping == "auto" and not has_holdout:
        # Nothing could be held out (one labelled anomaly): the fixed schedule with tail averaging.
        return config, recipe.max_epochs, "fixed"
    if frugal and recipe.joint_stopping == "holdout" and not has_holdout:
        if recipe.single_label_joint_lr is not None:
            config = dataclasses.replace(config, joint_lr=recipe.single_label_joint_lr)
        return config, min(recipe.max_epochs, recipe.single_label_epochs), "holdout"
    if has_val or recipe.validation == "fixed_epochs":
        return config, recipe.max_epochs, "holdout"  # early stopping only where stop_X exists
    stopping: JointStopping = "holdout" if recipe.joint_stopping == "auto" else recipe.joint_stopping  # type: ignore[assignment]
    return config, recipe.max_epochs, stopping


def _screened_network(recipe: MemberRecipe, net: MNPNetwork, anomalies_t: torch.Tensor, pool_t: torch.Tensor,
                      confirmed_t: torch.Tensor, split: HoldOut, rng: np.random.Generator, seed: int,
                      n_prototypes: int | None, schedule: tuple[TrainingConfig, int, JointStopping],
                      summary: dict[str, Any]) -> tuple[MNPNetwork, torch.Tensor, torch.Tensor, HoldOut]:
    """The member's network after ``screen_pool``: which rows a first fit ``net`` leaves out, then a
    fresh pretraining and placement on the rest (unchanged inputs where nothing can be screened)."""
    device = pool_t.device
    holdout_t = _on_device(split.pretrain_val, device)
    screen = screen_pool(net, anomalies_t, pool_t, confirmed_t, holdout_t, rng)
    if screen is None:
        return net, pool_t, confirmed_t, split
    if recipe.screen_by == "score":
        joint_config, n_epochs, stopping = schedule
        train_joint(joint_config, net, anomalies_t, pool_t, confirmed_t, split.stop_X, split.stop_y, rng,
                    n_epochs, stopping)
        screen = screen_by_score(net, pool_t, confirmed_t, holdout_t, screen.contamination, rng)
    summary["screen"] = {**screen.summary(), "by": recipe.screen_by}
    pool_t, confirmed_t = pool_t[screen.keep_pool], confirmed_t[screen.keep_pool]
    if split.pretrain_val is not None and screen.keep_holdout is not None:
        split = split.with_pretrain_val(split.pretrain_val[screen.keep_holdout.cpu().numpy()])
    pre_val_t = _on_device(split.pretrain_val, device)
    net = _initial_network(recipe, anomalies_t, pool_t, confirmed_t, pre_val_t, rng, seed, n_prototypes, summary)
    return net, pool_t, confirmed_t, split


def _initial_network(recipe: MemberRecipe, anomalies_t: torch.Tensor, pool_t: torch.Tensor, confirmed_t: torch.Tensor,
                     pre_val_t: torch.Tensor | None, rng: np.random.Generator, seed: int, n_prototypes: int | None,
                     summary: dict[str, Any]) -> MNPNetwork:
    """Stages 1 and 2: the pretrained autoencoder with the prototypes placed (no joint training)."""
    config = recipe.config
    n_features, device = pool_t.shape[1], pool_t.device
    ae, summary["pretrain_epochs"] = pretrain(config, pool_t, pre_val_t, n_features, recipe.n_emb, rng)
    reference_normals = pre_val_t if recipe.validation == "reference" else None
    Z, z_rows = normal_embeddings(ae, pool_t, reference_normals, seed, normalise=not config.faithful)
    centres, summary["silhouette"] = choose_prototypes(Z, n_prototypes, seed)
    net = MNPNetwork(n_features, recipe.n_emb, int(len(centres)), scorer_features=recipe.scorer_features).to(device)
    net.encoder.load_state_dict(ae.encoder.state_dict())
    net.decoder.load_state_dict(ae.decoder.state_dict())
    with torch.no_grad():
        net.prototypes.copy_(torch.from_numpy(centres))
    if recipe.weighted_prototypes and z_rows is not None:
        rule = estimate_rule(config, net, anomalies_t, pool_t, confirmed_t, rng)
        if rule.kind in ("adaptive", "rank"):
            summary["prototype_contamination"] = rule.contamination
            with torch.no_grad():
                net.prototypes.copy_(torch.from_numpy(
                    reweighted_prototypes(net, rule, pool_t[torch.from_numpy(z_rows).to(device)], Z, seed)))
    return net


def _on_device(rows: FloatMatrix | None, device: torch.device) -> torch.Tensor | None:
    return None if rows is None else torch.from_numpy(rows).to(device)
