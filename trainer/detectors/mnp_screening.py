"""Screening the unlabelled pool before a member is fitted for good (issue 12, round 14).

Why: the likelihood weights (:mod:`.mnp_weighting`) act in the joint stage only, and there the
label-frugal stopper keeps joint epoch 1 or 2 in about half of the member fits
(``benchmarks/results/dev/issue12_product_stopping_diagnosis.md``): the weights get a few hundred
steps. By then the autoencoder, the prototypes and so every feature the scorer reads were pretrained
on the whole contaminated pool, hidden anomalies counted as normal. Screening applies the same idea
(down-weight the unlabelled rows that look least like the normal data, with a strength the data
sets) where the model is formed: a first pretraining and prototype placement give every pool row the
rank rule's normality, the rows below the rule's threshold get weight 0, and the member is pretrained
and placed again from scratch on the rest.

departure from the spec, which pretrains on every unlabelled row. resolution: the share left out is
the rank rule's contamination estimate (a mixture-proportion bound read off the labelled anomalies'
normality, clipped to [1 %, 25 %]), so the strength follows the data; the held-out unlabelled rows
the stopper calls "normal" are screened with the same threshold, since hidden anomalies among them
are what makes the hold-out's AUC-PR uninformative (round 9's record).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .mnp_network import MNPForward, MNPNetwork, evaluating
from .mnp_weighting import free_sample, rank_rule

__all__ = ["PoolScreen", "screen_by_score", "screen_pool"]

# Rows per forward pass while screening (bounds memory on the 50,000-row pools of the benchmark).
_CHUNK_ROWS = 16_384


@dataclass(frozen=True)
class PoolScreen:
    """Which rows stay: masks over the pool and over the unlabelled hold-out (None without one)."""

    keep_pool: torch.Tensor
    keep_holdout: torch.Tensor | None
    contamination: float

    def summary(self) -> dict[str, float | int]:
        """What the training summary records."""
        out: dict[str, float | int] = {"contamination": round(self.contamination, 5),
                                       "dropped": int((~self.keep_pool).sum())}
        if self.keep_holdout is not None:
            out["dropped_holdout"] = int((~self.keep_holdout).sum())
        return out


def _forward(net: MNPNetwork, rows: torch.Tensor) -> list[MNPForward]:
    return [net(rows[i:i + _CHUNK_ROWS]) for i in range(0, len(rows), _CHUNK_ROWS)]


def _s_max_and_rec(net: MNPNetwork, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    parts = _forward(net, rows)
    return torch.cat([p.s_max for p in parts]), torch.cat([p.rec for p in parts])


def _scores(net: MNPNetwork, rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([p.score.flatten() for p in _forward(net, rows)])


def screen_pool(net: MNPNetwork, anomalies: torch.Tensor, pool: torch.Tensor, confirmed: torch.Tensor,
                holdout: torch.Tensor | None, rng: np.random.Generator) -> PoolScreen | None:
    """The rows a member keeps after a first fit ``net`` (prototypes placed, no joint training).

    The threshold comes from at most ``ESTIMATE_ROWS`` free pool rows, the same sample size as the
    weighting's estimate; every row is then compared with it. Analyst-confirmed normals always stay.
    None when the rule cannot tell rows apart (a degenerate pool): nothing is screened.
    """
    with evaluating(net):
        s_pool, r_pool = _s_max_and_rec(net, pool)
        s_anom, r_anom = _s_max_and_rec(net, anomalies)
        free = free_sample(confirmed, rng)
        rule = rank_rule(s_pool[free], r_pool[free], s_anom, r_anom)
        if rule.kind != "rank" or rule.contamination is None:
            return None
        keep_pool = (rule.normality(s_pool, r_pool) >= rule.tau) | confirmed
        keep_holdout = None
        if holdout is not None and len(holdout):
            s_hold, r_hold = _s_max_and_rec(net, holdout)
            keep_holdout = rule.normality(s_hold, r_hold) >= rule.tau
    return PoolScreen(keep_pool=keep_pool, keep_holdout=keep_holdout, contamination=float(rule.contamination))


def screen_by_score(net: MNPNetwork, pool: torch.Tensor, confirmed: torch.Tensor, holdout: torch.Tensor | None,
                    contamination: float, rng: np.random.Generator) -> PoolScreen:
    """The rows a member keeps when a jointly trained first fit ``net`` ranks them (``screen_by="score"``).

    Why the scorer: on the contamination benchmark's pools the first fit's normality leaves out
    hidden anomalies at little better than their base rate on half the sets, since an autoencoder
    pretrained on them reconstructs them well; phi, trained to put the labelled anomalies above the
    pool, ranks the hidden ones that resemble them high (the PU-learning assumption the rank
    rule's estimate already makes). The share is the estimate ``contamination``; the threshold is
    phi's (1 - share)-quantile over at most ``ESTIMATE_ROWS`` free pool rows. Confirmed normals stay.
    """
    with evaluating(net):
        phi_pool = _scores(net, pool)
        threshold = torch.quantile(phi_pool[free_sample(confirmed, rng)].float(), 1.0 - contamination)
        keep_pool = (phi_pool <= threshold) | confirmed
        keep_holdout = None if holdout is None or not len(holdout) else _scores(net, holdout) <= threshold
    return PoolScreen(keep_pool=keep_pool, keep_holdout=keep_holdout, contamination=contamination)
