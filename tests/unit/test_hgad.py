"""Unit tests of HGAD: flow maths, loss terms, centre init, calibration, persistence, scoring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from protoguard.schemas.errors import ConfigError, NotFittedError
from protoguard.trainer.detectors import HGADDetector
from protoguard.trainer.detectors.hgad_network import init_main_centres
from protoguard.trainer.detectors.hgad_flow import HGADFlow
from protoguard.trainer.detectors.hgad_losses import (
    entropy_loss,
    intra_class_log_likelihood,
    intra_class_nll,
    mutual_information,
    saturating_likelihood_loss,
)
from protoguard.trainer.detectors.hgad_preprocess import fit_preprocess, transform_preprocess

torch.set_num_threads(1)

CLASSES = ("disk", "net", "cpu")


def _perturbed_flow(dim: int, n_blocks: int, strength: float = 1.0) -> HGADFlow:
    """A flow whose blocks are far from identity, so the log-det test is not trivial."""
    torch.manual_seed(1)
    flow = HGADFlow(dim, n_blocks=n_blocks, clamp=1.9, seed=3).double()
    with torch.no_grad():
        for block in flow.blocks:
            block.subnet[2].weight.mul_(30.0 * strength)
            block.subnet[2].bias.normal_(0.0, 3.0 * strength)
            block.global_scale.add_(torch.randn(dim) * 2.0 * strength)
            block.global_offset.normal_(0.0, 0.5)
    return flow


def _make_data(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 5-d normals with different means and correlation structures.

    The classes' distributions are fixed (mixing matrices from seed 0); ``seed`` draws the rows, so
    data of every seed comes from the same classes (before issue 15 each seed drew new mixing
    matrices, so "normal" test rows were a shifted distribution that better-fitting flows flagged).
    """
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(0)
    mixings = [fixed.normal(0, 1, (5, 5)) * 0.5 + np.eye(5) for _ in CLASSES]
    parts, labels = [], []
    for c, name in enumerate(CLASSES):
        mixing = mixings[c]
        parts.append(rng.normal(0, 1, (n_per_class, 5)) @ mixing + 3.0 * c)
        labels += [name] * n_per_class
    return np.concatenate(parts).astype(np.float32), np.array(labels)


@pytest.fixture(scope="module")
def fitted() -> HGADDetector:
    X, c = _make_data(300, seed=0)
    return HGADDetector(n_blocks=4, n_intra_centres=2, n_epochs=15, batch_size=256, random_state=0).fit(X, c)


# ----------------------------------------------------------------------------- flow
@pytest.mark.parametrize("dim", [4, 5])
def test_flow_log_det_matches_autograd_jacobian(dim: int) -> None:
    flow = _perturbed_flow(dim, n_blocks=3)
    x = torch.randn(3, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, log_det = flow(x)
    for i in range(x.shape[0]):
        J = jacobian(lambda v: flow(v.unsqueeze(0))[0].squeeze(0), x[i])
        sign, logabs = torch.linalg.slogdet(J)
        assert sign.item() != 0
        # 1e-6, not 1e-12: the rotations are stored in float32, orthogonal to ~1e-7 only.
        assert log_det[i].item() == pytest.approx(logabs.item(), abs=1e-6)
    assert log_det.abs().max() > 1.0  # the perturbation made the test non-trivial


def test_flow_inverts_to_1e_4(fitted: HGADDetector) -> None:
    flows = [_perturbed_flow(6, n_blocks=8, strength=0.1).float(), fitted.network_.flow]
    for flow in flows:
        dim = flow.blocks[0].dim
        x = torch.randn(256, dim, generator=torch.Generator().manual_seed(0)) * 2.0
        x = x.to(next(flow.parameters()).device)  # the fitted flow lives on CUDA where one is present
        with torch.no_grad():
            z, log_det = flow(x)
            x_back = flow.inverse(z)
        assert log_det.abs().max() > 0.5  # not an identity map
        assert torch.max(torch.abs(x_back - x)).item() < 1e-4


# ----------------------------------------------------------------------------- losses
def test_mutual_information_matches_hand_computation() -> None:
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    centres = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    logits_pi = torch.tensor([0.0, math.log(3.0)])  # pi = (0.25, 0.75)
    y = torch.tensor([0, 1])
    eps = 0.1
    pi = np.array([0.25, 0.75])
    d = np.array([[0.0, 2.0], [5.0, 1.0]])
    expected = 0.0
    for row in range(2):
        logits = np.log(pi) - 0.5 * d[row]
        log_post = logits - np.log(np.exp(logits).sum())
        target = np.full(2, eps / 2)
        target[y[row]] += 1 - eps
        expected += (target * (log_post - np.log(pi))).sum() / 2
    got = mutual_information(z, centres, logits_pi, y, smoothing=eps)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_entropy_loss_matches_hand_computation() -> None:
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    centres = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    d = np.array([[0.0, 2.0], [5.0, 1.0]])
    q = np.exp(-0.5 * d)
    q /= q.sum(1, keepdims=True)
    expected = float(-(q * np.log(q)).sum(1).mean())
    assert entropy_loss(z, centres).item() == pytest.approx(expected, abs=1e-6)


def test_stop_gradients_follow_the_spec_table() -> None:
    z = torch.randn(8, 3, requires_grad=True)
    log_det = torch.zeros(8)
    centres = torch.randn(2, 3, requires_grad=True)
    deltas = torch.randn(2, 1, 3, requires_grad=True)
    logits_pi = torch.zeros(2, requires_grad=True)
    logits_omega = torch.zeros(2, 2, requires_grad=True)
    y = torch.tensor([0, 1] * 4)
    mutual_information(z, centres, logits_pi, y, smoothing=0.02).backward()
    assert logits_pi.grad is None  # pi is trained by L_g only
    assert centres.grad is not None and centres.grad.abs().sum() > 0
    centres.grad = None
    ll = intra_class_log_likelihood(z, log_det, centres, deltas, logits_omega, y)
    (intra_class_nll(z, log_det, centres, deltas, logits_omega, y) + saturating_likelihood_loss(ll)).backward()
    assert centres.grad is None  # the main centre is fixed inside the intra-class terms
    assert deltas.grad is not None and logits_omega.grad is not None


# ----------------------------------------------------------------------------- init
def test_centres_do_not_collapse_when_classes_outnumber_dimensions() -> None:
    centres = init_main_centres(12, 4, torch.Generator().manual_seed(0))
    assert torch.pdist(centres).min() > 0
    X = np.random.default_rng(0).normal(0, 1, (600, 4)).astype(np.float32)
    classes = np.arange(600) % 6  # 6 classes > D/2 = 2
    det = HGADDetector(n_blocks=2, n_intra_centres=1, n_epochs=2, batch_size=300, random_state=0).fit(X, classes)
    assert torch.pdist(det.network_.centres.detach()).min() > 0


def test_one_hot_centres_are_five_apart_when_few_classes() -> None:
    centres = init_main_centres(3, 16, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.pdist(centres), torch.full((3,), 5.0), atol=0.6)


def test_preprocess_pads_small_inputs_and_dequantises_only_in_training() -> None:
    X = np.random.default_rng(0).integers(0, 5, (100, 2)).astype(np.float64)
    stats = fit_preprocess(X)
    assert stats.n_pad == 2 and stats.is_discrete.all()
    scored = transform_preprocess(X, stats)
    assert scored.shape == (100, 4) and np.all(scored[:, 2:] == 0)
    np.testing.assert_array_equal(scored, transform_preprocess(X, stats))
    trained = transform_preprocess(X, stats, rng=np.random.default_rng(1))
    assert not np.array_equal(trained[:, :2], scored[:, :2])


# ----------------------------------------------------------------------------- detector
def test_save_load_gives_identical_scores(fitted: HGADDetector) -> None:
    X, c = _make_data(40, seed=5)
    blob, manifest = fitted.save()
    loaded = HGADDetector.load(blob, manifest)
    np.testing.assert_array_equal(fitted.score(X, c), loaded.score(X, c))
    np.testing.assert_array_equal(fitted.score(X), loaded.score(X))
    assert loaded.thresholds_ == fitted.thresholds_


def test_manifest_holds_per_class_thresholds_and_classes(fitted: HGADDetector) -> None:
    _, manifest = fitted.save()
    assert manifest.detector == "hgad"
    assert manifest.calibration.method == "normal_quantile"
    assert set(manifest.calibration.per_class) == set(CLASSES)
    assert manifest.calibration.per_class == fitted.thresholds_
    assert sorted(manifest.training_summary["classes"]) == sorted(CLASSES)
    assert manifest.scaler is not None and manifest.scaler.kind == "robust"


def test_planted_anomaly_scores_above_normals_per_class(fitted: HGADDetector) -> None:
    X, c = _make_data(100, seed=7)
    scores = fitted.score(X, c)
    for name in CLASSES:
        rows = c == name
        planted = X[rows][:1] + np.array([8.0, -8.0, 8.0, -8.0, 8.0], dtype=np.float32)
        planted_score = fitted.score(planted, [name])[0]
        assert planted_score > scores[rows].max()
        assert planted_score > fitted.thresholds_[name]
        # normals mostly stay under their class threshold
        assert (scores[rows] > fitted.thresholds_[name]).mean() < 0.1


def test_unknown_class_falls_back_to_class_agnostic_score(fitted: HGADDetector) -> None:
    X, c = _make_data(20, seed=9)
    agnostic = fitted.score(X)
    claimed = fitted.score(X, c)
    mixed = fitted.score(X, ["never-seen"] * 30 + list(c[30:]))
    np.testing.assert_array_equal(mixed[:30], agnostic[:30])
    np.testing.assert_array_equal(mixed[30:], claimed[30:])
    np.testing.assert_array_equal(fitted.score(X, [None] * len(X)), agnostic)
    assert np.all(agnostic <= claimed + 1e-6)  # min over classes
    explanation = fitted.explain(X, ["never-seen"] * 30 + list(c[30:]))
    assert np.isnan(explanation.claimed_vs_best_gap[:30]).all()
    assert np.all(explanation.claimed_vs_best_gap[30:] >= 0)
    assert np.all(explanation.threshold[:30] == np.float32(fitted.threshold_))


def test_claimed_vs_best_gap_flags_a_spoofed_class(fitted: HGADDetector) -> None:
    X, c = _make_data(30, seed=11)
    spoofed = np.where(c == "disk", "cpu", c)  # disk events claiming to be cpu
    explanation = fitted.explain(X, spoofed)
    disk = c == "disk"
    assert np.median(explanation.claimed_vs_best_gap[disk]) > np.median(explanation.claimed_vs_best_gap[~disk]) + 0.5
    assert sum(b == "disk" for b, d in zip(explanation.best_class, disk) if d) >= 0.8 * disk.sum()


def test_seed_reproduces_and_fit_leaves_x_unchanged() -> None:
    X, c = _make_data(80, seed=3)
    X_copy = X.copy()
    params = dict(n_blocks=2, n_intra_centres=2, n_epochs=4, batch_size=128, random_state=4)
    a = HGADDetector(**params).fit(X, c).score(X, c)
    b = HGADDetector(**params).fit(X, c).score(X, c)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(X, X_copy)


def test_errors_name_the_problem() -> None:
    with pytest.raises(NotFittedError, match="Call fit"):
        HGADDetector().score(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="'n_blocks' parameter of HGADDetector must be an int >= 1. Got 0"):
        HGADDetector(n_blocks=0).fit(np.zeros((4, 3)), [0, 0, 1, 1])
    assert HGADDetector(n_blocks=3).clone().get_params()["n_blocks"] == 3


# ----------------------------------------------------------------------------- issue 15
def test_data_centres_start_at_the_class_means_of_the_initial_latents() -> None:
    from protoguard.trainer.detectors.hgad_network import MixtureFlow, data_main_centres

    torch.manual_seed(0)
    network = MixtureFlow(5, 3, 2, n_blocks=3, clamp=1.9, seed=0)
    x = torch.randn(90, 5) + torch.arange(3).repeat_interleave(30).unsqueeze(1) * 4.0
    y = torch.arange(3).repeat_interleave(30)
    centres = data_main_centres(network, x, y)
    with torch.no_grad():
        z = network.flow(x)[0]
    for c in range(3):
        assert torch.allclose(centres[c], z[y == c].mean(0), atol=1e-5)
    assert torch.pdist(centres).min() > 1.0  # separated classes give separated centres


def test_explain_rows_is_the_alert_view_of_explain(fitted: HGADDetector) -> None:
    X, c = _make_data(20, seed=12)
    claimed = list(c[:50]) + ["never-seen"] * 10
    exp = fitted.explain_rows(X, claimed)
    full = fitted.explain(X, claimed)
    assert exp.score_name == "class_nll" and exp.top_features is None
    np.testing.assert_array_equal(exp.score, full.score)
    np.testing.assert_array_equal(exp.components["claimed_vs_best_gap"], np.nan_to_num(full.claimed_vs_best_gap))
    np.testing.assert_array_equal(fitted.score_rows(X, claimed), fitted.score(X, claimed))
    assert fitted.explain_rows(X[:0], []).components["claimed_vs_best_gap"].shape == (0,)
    assert (fitted.predict_class(X) == np.array(full.best_class, dtype=object)).all()


def test_load_detector_rebuilds_hgad_and_thresholds_follow_the_manifest(fitted: HGADDetector) -> None:
    from protoguard.trainer.detectors.loading import load_detector

    X, c = _make_data(10, seed=13)
    blob, manifest = fitted.save()
    loaded = load_detector(blob, manifest)
    np.testing.assert_array_equal(loaded.score(X, c), fitted.score(X, c))
    # A retrain that recalibrated to one budget threshold (no per-class values) is served as recorded.
    recalibrated = manifest.model_copy(update={"threshold": 0.5, "calibration": manifest.calibration.model_copy(update={"per_class": {}})})
    assert np.all(load_detector(blob, recalibrated).explain(X, c).threshold == np.float32(0.5))


def test_refit_candidate_for_a_class_aware_champion_uses_normal_rows_and_champion_classes(fitted: HGADDetector) -> None:
    from protoguard.trainer.refit import fit_candidate, recipe_for
    from protoguard.trainer.training import TrainingData

    X, c = _make_data(120, seed=14)
    anomalies = X[:5] + 9.0
    data = TrainingData(X_unlabelled=X[:300], X_anomalies=anomalies, X_normals=X[300:], feature_names=fitted.feature_names_in_)
    assert not recipe_for("hgad").needs_labelled_anomalies and recipe_for("mnp").needs_labelled_anomalies
    candidate = fit_candidate("hgad", data, champion=fitted, mnp_params={}, warm_start=fitted, random_state=3)
    assert isinstance(candidate, HGADDetector) and candidate is not fitted
    assert candidate.classes_ == fitted.classes_ and candidate.n_blocks == fitted.n_blocks
    assert candidate.training_summary_["n_train"] + candidate.training_summary_["n_val"] == len(X)  # no anomalies
    with pytest.raises(ValueError, match="no retrain recipe for detector kind 'x'"):
        recipe_for("x")
