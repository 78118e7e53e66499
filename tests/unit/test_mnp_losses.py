"""The MNP losses as pure functions: ranges, normalisations and the faithful/fixed switches."""
from __future__ import annotations

import math

import pytest
import torch

from protoguard.trainer.detectors.mnp_losses import (
    dec_target,
    dwa_combine,
    dwa_weights,
    kl_clustering_loss,
    likelihood_weights,
    prototype_loss,
    reconstruction_loss,
    score_loss,
)
from protoguard.trainer.detectors.mnp_network import hidden_width, student_t_similarity

torch.set_num_threads(1)


@pytest.fixture
def sim() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(128, 8, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    return student_t_similarity(z, c)


def test_similarity_lies_in_student_t_range(sim: torch.Tensor) -> None:
    # Unit vectors are at squared distance [0, 4], so 1 / (1 + d) is in [0.2, 1].
    assert sim.shape == (128, 4)
    assert float(sim.min()) >= 0.2 - 1e-6 and float(sim.max()) <= 1.0 + 1e-6


def test_likelihood_weights_range_and_batch_mean(sim: torch.Tensor) -> None:
    s_max = sim.max(1).values
    omega = likelihood_weights(s_max, beta=1.0)
    assert float(omega.mean()) == pytest.approx(1.0, abs=1e-6)
    raw = torch.sigmoid(s_max)
    lo, hi = 1 / (1 + math.exp(-0.2)), 1 / (1 + math.exp(-1.0))
    assert lo - 1e-6 <= float(raw.min()) and float(raw.max()) <= hi + 1e-6
    # Q10: after renormalisation the spread is at most sigma(1)/sigma(0.2) ~ 1.33.
    assert float(omega.max() / omega.min()) <= hi / lo + 1e-6
    # Higher similarity -> more likely normal -> larger weight.
    order = torch.argsort(s_max)
    assert torch.all(omega[order][1:] >= omega[order][:-1] - 1e-7)


def test_likelihood_weights_confirmed_rows_pinned_to_one(sim: torch.Tensor) -> None:
    s_max = sim.max(1).values
    mask = torch.zeros(128, dtype=torch.bool)
    mask[:10] = True
    omega = likelihood_weights(s_max, beta=1.0, fixed_mask=mask)
    assert torch.all(omega[:10] == 1.0)
    assert float(omega[10:].mean()) == pytest.approx(1.0, abs=1e-6)


def test_likelihood_weights_ablation_and_detach() -> None:
    s_max = torch.tensor([0.3, 0.9], requires_grad=True)
    assert torch.equal(likelihood_weights(s_max, 1.0, enabled=False), torch.ones(2))
    assert likelihood_weights(s_max, 1.0, detach=False).requires_grad
    assert not likelihood_weights(s_max, 1.0, detach=True).requires_grad


def test_dec_target_rows_sum_to_one_and_sharpen(sim: torch.Tensor) -> None:
    q = sim / sim.sum(1, keepdim=True)
    p = dec_target(q, detach=True)
    assert torch.allclose(p.sum(1), torch.ones(128), atol=1e-6)
    # Sharpening: the target puts more mass than q on each row's favourite cluster, on average.
    best = q.argmax(1)
    assert float(p.gather(1, best[:, None]).mean()) > float(q.gather(1, best[:, None]).mean())


def test_kl_sum_is_batch_size_times_mean(sim: torch.Tensor) -> None:
    total = kl_clustering_loss(sim, detach_target=False, reduction="sum")
    mean = kl_clustering_loss(sim, detach_target=False, reduction="mean")
    assert float(total) == pytest.approx(128 * float(mean), rel=1e-5)
    assert float(total) >= 0.0


def test_prototype_loss_kl_reduction_mean_is_per_row(sim: torch.Tensor) -> None:
    # The fixed variant averages the DEC term per row (spec Q4); faithful keeps the batch sum.
    s_u, s_a, omega = sim.max(1).values, torch.tensor([0.3]), torch.ones(128)
    contrastive = prototype_loss(s_u, s_a, sim, omega, lambda_kl=0.0, detach_target=True)
    summed = prototype_loss(s_u, s_a, sim, omega, lambda_kl=1.0, detach_target=True)
    averaged = prototype_loss(s_u, s_a, sim, omega, lambda_kl=1.0, detach_target=True, kl_reduction="mean")
    kl_mean = kl_clustering_loss(sim, detach_target=True, reduction="mean")
    assert float(averaged) == pytest.approx(float(contrastive + kl_mean), rel=1e-5)
    assert float(summed - contrastive) == pytest.approx(128 * float(averaged - contrastive), rel=1e-4)


def test_dwa_weights_sum_to_one_and_zero_previous_mean() -> None:
    losses = torch.tensor([0.5, 0.1, 3.0])
    w = dwa_weights(losses, torch.tensor([1.0, 0.2, 2.0]), temperature=2.0, detach=True)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    # A loss that grew relative to last epoch gets more weight: 3.0/2.0 > 0.5/1.0 = 0.1/0.2.
    assert float(w[2]) > float(w[0]) == pytest.approx(float(w[1]))
    w0 = dwa_weights(losses, torch.tensor([0.0, 1.0, 1.0]), temperature=2.0, detach=True)
    assert float(w0[0]) == 0.0 and float(w0.sum()) == pytest.approx(1.0)
    combined = dwa_combine(losses, torch.ones(3), 2.0, detach=True)
    assert float(combined) == pytest.approx(float((dwa_weights(losses, torch.ones(3), 2.0, detach=True) * losses).sum()))


def test_stable_dwa_matches_reference_and_survives_a_loss_spike() -> None:
    losses, prev = torch.tensor([0.5, 0.1, 3.0]), torch.tensor([1.0, 0.2, 2.0])
    assert torch.allclose(dwa_weights(losses, prev, 2.0, detach=True, stable=True), dwa_weights(losses, prev, 2.0, detach=True))
    # Seen on 38_thyroid (fixed, frugal): the score loss jumped 260x over its previous epoch mean.
    spike, tiny = torch.tensor([0.0049, 0.416, 10.15]), torch.tensor([0.0041, 0.0016, 10.11])
    assert torch.isnan(dwa_combine(spike, tiny, 2.0, detach=True)).item()  # the reference's overflow
    w = dwa_weights(spike, tiny, 2.0, detach=True, stable=True)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0) and float(w[1]) == pytest.approx(1.0)
    w0 = dwa_weights(spike, torch.tensor([0.0, 1.0, 1.0]), 2.0, detach=True, stable=True)
    assert float(w0[0]) == 0.0 and float(w0.sum()) == pytest.approx(1.0)


def test_dwa_detach_switch_changes_gradient() -> None:
    losses = torch.tensor([0.5, 0.1, 3.0], requires_grad=True)
    grad_fixed = torch.autograd.grad(dwa_combine(losses, torch.ones(3), 2.0, detach=True), losses)[0]
    grad_faithful = torch.autograd.grad(dwa_combine(losses, torch.ones(3), 2.0, detach=False), losses)[0]
    assert torch.allclose(grad_fixed, dwa_weights(losses, torch.ones(3), 2.0, detach=True))
    assert not torch.allclose(grad_fixed, grad_faithful)


def test_score_loss_weighting_is_noop_only_in_faithful_mode() -> None:
    scores_u = torch.tensor([0.1, 0.9, 0.2, 0.4])
    scores_a = torch.tensor([0.7])
    omega = torch.tensor([0.5, 1.5, 1.2, 0.8])
    faithful = score_loss(scores_u, scores_a, omega, weighted=False)
    plain = score_loss(scores_u, scores_a, torch.ones(4), weighted=False)
    weighted = score_loss(scores_u, scores_a, omega, weighted=True)
    assert float(faithful) == pytest.approx(float(plain))
    expected = 0.5 * 0.3**2 + (omega * 0.5 * scores_u**2).mean()
    assert float(weighted) == pytest.approx(float(expected), rel=1e-6)


def test_reconstruction_hinge_pushes_anomalies_above_unlabelled_mean() -> None:
    rec_u, omega = torch.tensor([0.01, 0.03]), torch.ones(2)
    far = reconstruction_loss(rec_u, torch.tensor([1.0]), omega, margin=0.02)
    near = reconstruction_loss(rec_u, torch.tensor([0.02]), omega, margin=0.02)
    assert float(far) == pytest.approx(0.02)  # hinge inactive: only the unlabelled mean remains
    assert float(near) == pytest.approx(0.02 + 0.02)


def test_prototype_loss_prefers_anomalies_far_from_prototypes(sim: torch.Tensor) -> None:
    s_u = sim.max(1).values
    anomaly_far = prototype_loss(s_u, torch.tensor([0.2]), sim, torch.ones(128), lambda_kl=0.0, detach_target=True)
    anomaly_near = prototype_loss(s_u, torch.tensor([1.0]), sim, torch.ones(128), lambda_kl=0.0, detach_target=True)
    assert float(anomaly_far) < float(anomaly_near)


def test_hidden_width_follows_floor_rule() -> None:
    assert hidden_width(21, 8) == 15
    assert hidden_width(6, 8) == 7  # floor(-1) = -1: slightly wider than D
    assert hidden_width(196, 8) == 102
