"""The adaptive likelihood weighting (trainer/detectors/mnp_weighting.py) on s_max distributions
whose answer is known: how much contamination it estimates, and how far apart it puts the groups."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from protoguard.trainer.detectors.mnp_losses import renormalised_weights
from protoguard.trainer.detectors.mnp_weighting import (
    EPS_MAX,
    EPS_MIN,
    LikelihoodRule,
    adaptive_rule,
    estimate_contamination,
    normalise_weighting,
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
