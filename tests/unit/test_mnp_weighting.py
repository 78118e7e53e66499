"""The adaptive likelihood weighting (trainer/detectors/mnp_weighting.py) on s_max distributions
whose answer is known: how much contamination it estimates, and how far apart it puts the groups."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from protoguard.trainer.detectors.mnp_losses import renormalised_weights
from protoguard.trainer.detectors.mnp_weighting import (
    EPS_MAX,
    EPS_MIN,
    RANK_GRID_POINTS,
    LikelihoodRule,
    adaptive_rule,
    estimate_contamination,
    estimate_contamination_bound,
    normalise_weighting,
    percentile_of,
    rank_rule,
)


def _pool(share: float, n: int = 4000, seed: int = 0, n_labelled: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """s_max of a pool with ``share`` hidden anomalies (around 0.35) among normals (around 0.85),
    labelled anomalies drawn like the hidden ones; returns (pool, is_hidden, labelled)."""
    rng = np.random.default_rng(seed)
    hidden = rng.random(n) < share
    s = np.where(hidden, rng.normal(0.35, 0.05, n), rng.normal(0.85, 0.05, n)).clip(0.2, 1.0)
    labelled = rng.normal(0.35, 0.05, n_labelled).clip(0.2, 1.0)
    return torch.tensor(s, dtype=torch.float32), torch.tensor(hidden), torch.tensor(labelled, dtype=torch.float32)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2])
def test_contamination_estimate_tracks_the_hidden_share(share: float) -> None:
    """Consistent when the labelled median is well estimated (many labels); with 9 labels the
    sample median's noise moves it (0.39 instead of 0.35 here: 1.6x the share, still clipped)."""
    pool, _, labelled = _pool(share, n_labelled=400)
    assert estimate_contamination(pool, labelled) == pytest.approx(share, abs=0.02)
    pool, _, few = _pool(share)
    assert share <= estimate_contamination(pool, few) <= min(EPS_MAX, 2 * share)


def test_contamination_estimate_is_clipped() -> None:
    pool, _, _ = _pool(0.0)
    assert estimate_contamination(pool, torch.tensor([0.05])) == EPS_MIN  # anomalies below every row
    assert estimate_contamination(pool, torch.tensor([0.99])) == EPS_MAX  # anomalies amid the normals
    assert estimate_contamination(pool, torch.empty(0)) == EPS_MIN


def test_adaptive_weights_put_hidden_anomalies_far_below_normals() -> None:
    pool, hidden, labelled = _pool(0.1)
    rule = adaptive_rule(pool, labelled)
    raw = rule.raw(pool)
    assert rule.kind == "adaptive" and 0.1 <= rule.contamination <= 0.2
    assert float(raw[hidden].mean()) < 0.05 and float(raw[~hidden].mean()) > 0.8
    spec = LikelihoodRule(kind="spec").raw(pool)  # the spec's form: at most 1.33x apart
    assert float(spec[~hidden].mean() / spec[hidden].mean()) < 1.2
    omega = renormalised_weights(raw)
    assert float(omega.mean()) == pytest.approx(1.0, abs=1e-5)


def test_median_row_gets_095_and_threshold_row_05() -> None:
    pool = torch.linspace(0.2, 1.0, 1001)
    rule = adaptive_rule(pool, torch.empty(0), contamination=0.1)
    assert float(rule.raw(torch.tensor([rule.tau]))) == pytest.approx(0.5, abs=1e-6)
    assert float(rule.raw(pool.median()[None])) == pytest.approx(0.95, abs=1e-3)


def test_degenerate_pool_weighs_every_row_one() -> None:
    rule = adaptive_rule(torch.full((100,), 0.7), torch.tensor([0.3]))
    assert rule.kind == "off" and torch.equal(rule.raw(torch.rand(5)), torch.ones(5))


def test_rule_round_trips_and_old_boolean_form() -> None:
    pool, _, labelled = _pool(0.05)
    rule = adaptive_rule(pool, labelled)
    again = LikelihoodRule.from_dict(rule.as_dict())
    torch.testing.assert_close(again.raw(pool), rule.raw(pool), atol=1e-5, rtol=0)
    assert normalise_weighting(True) == "spec" and normalise_weighting(False) == "off"
    with pytest.raises(ValueError, match="weighting"):
        normalise_weighting("strong")


# ---------------------------------------------------------------------- the rank rule
def _two_signal_pool(share: float, n: int = 4000, seed: int = 1, n_labelled: int = 9,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """s_max and r of a pool where each signal alone overlaps the groups (hidden anomalies: lower
    s_max *or* higher r, noisy) but together they separate; labelled anomalies drawn like the hidden.
    Returns (s_pool, r_pool, is_hidden, s_labelled, r_labelled)."""
    rng = np.random.default_rng(seed)
    hidden = rng.random(n) < share

    def draw(is_anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.where(is_anomaly, rng.normal(0.55, 0.12, len(is_anomaly)), rng.normal(0.75, 0.12, len(is_anomaly)))
        r = np.where(is_anomaly, rng.normal(0.06, 0.02, len(is_anomaly)), rng.normal(0.03, 0.02, len(is_anomaly)))
        return s.clip(0.2, 1.0), r.clip(0.0, None)

    s, r = draw(hidden)
    s_a, r_a = draw(np.ones(n_labelled, bool))
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(s), t(r), torch.tensor(hidden), t(s_a), t(r_a)


def test_percentile_of_interpolates_and_saturates() -> None:
    grid = torch.tensor([0.0, 1.0, 2.0, 4.0])
    got = percentile_of(torch.tensor([-1.0, 0.0, 0.5, 2.0, 3.0, 4.0, 9.0]), grid)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 1 / 6, 2 / 3, 5 / 6, 1.0, 1.0]))


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2])
def test_contamination_bound_is_at_least_the_share_and_below_the_median_rule(share: float) -> None:
    """A bound on the share (never far below it), and never above the q = 1/2 ratio the adaptive
    rule uses, since that ratio is one of those it minimises over."""
    s, r, _, s_a, r_a = _two_signal_pool(share, n_labelled=400)
    rule = rank_rule(s, r, s_a, r_a)
    assert share - 0.02 <= rule.contamination <= min(EPS_MAX, 2 * share) + 0.02
    v_pool, v_a = rule.normality(s, r), rule.normality(s_a, r_a)
    assert rule.contamination <= max(EPS_MIN, min(EPS_MAX, 2 * float((v_pool <= v_a.median()).float().mean()))) + 1e-6


def test_two_signals_separate_better_than_either_and_weights_follow() -> None:
    s, r, hidden, s_a, r_a = _two_signal_pool(0.1)
    rule = rank_rule(s, r, s_a, r_a)
    raw = rule.raw(s, r)
    auc = lambda score: float(roc_auc_score(hidden.numpy(), score.numpy()))  # noqa: E731
    assert auc(-raw) > max(auc(-s), auc(r)) + 0.03
    assert float(raw[hidden].mean()) < 0.5 < 0.8 < float(raw[~hidden].mean())
    with pytest.raises(ValueError, match="reconstruction error"):
        rule.raw(s)


def test_rank_rule_round_trips_and_bound_clips() -> None:
    s, r, _, s_a, r_a = _two_signal_pool(0.05)
    rule = rank_rule(s, r, s_a, r_a)
    assert rule.kind == "rank" and len(rule.s_grid) == len(rule.r_grid) == RANK_GRID_POINTS
    again = LikelihoodRule.from_dict(rule.as_dict())
    torch.testing.assert_close(again.raw(s, r), rule.raw(s, r), atol=1e-4, rtol=0)
    assert normalise_weighting("rank") == "rank"
    v = torch.linspace(0, 1, 101)
    assert estimate_contamination_bound(v, torch.tensor([0.0, 0.0])) == EPS_MIN
    assert estimate_contamination_bound(v, torch.tensor([0.9, 1.0])) == EPS_MAX
