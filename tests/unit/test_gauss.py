"""Unit tests of GaussDetector: the detector contract, class-conditional scoring, explanations."""
from __future__ import annotations

import numpy as np
import pytest

from protoguard.schemas.errors import ConfigError, ModelIntegrityError, NotFittedError
from protoguard.trainer.detectors import GaussDetector
from protoguard.trainer.detectors.loading import load_detector

CLASSES = ("disk", "net", "cpu")


def _make_data(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of correlated 5-d normals (fixed class distributions, rows drawn by ``seed``)."""
    fixed = np.random.default_rng(0)
    mixings = [fixed.normal(0, 1, (5, 5)) * 0.5 + np.eye(5) for _ in CLASSES]
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n_per_class, 5)) @ m + 3.0 * c for c, m in enumerate(mixings)])
    return X.astype(np.float32), np.repeat(CLASSES, n_per_class)


@pytest.fixture(scope="module")
def fitted() -> GaussDetector:
    X, c = _make_data(300, seed=1)
    return GaussDetector(random_state=0).fit(X, c, feature_names=[f"f{i}" for i in range(5)])


def test_init_stores_parameters_verbatim_and_defaults_are_immutable() -> None:
    det = GaussDetector(shrinkage=0.3, random_state=4)
    assert det.get_params() == {"shrinkage": 0.3, "reg_covar": 1e-6, "threshold_quantile": 0.995, "random_state": 4}
    assert vars(GaussDetector()).keys() == set(GaussDetector._param_names())
    assert GaussDetector(shrinkage=0.2).clone().get_params()["shrinkage"] == 0.2


def test_fit_returns_self_leaves_x_unchanged_and_seeds_reproduce() -> None:
    X, c = _make_data(80, seed=2)
    X_copy = X.copy()
    det = GaussDetector(random_state=3)
    assert det.fit(X, c) is det
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(det.score(X, c), GaussDetector(random_state=3).fit(X, c).score(X, c))


def test_save_load_keeps_scores_thresholds_and_explanations(fitted: GaussDetector) -> None:
    X, c = _make_data(40, seed=5)
    blob, manifest = fitted.save()
    assert manifest.detector == "gauss" and set(manifest.calibration.per_class) == set(CLASSES)
    loaded = load_detector(blob, manifest)
    assert isinstance(loaded, GaussDetector)
    np.testing.assert_array_equal(fitted.score(X, c), loaded.score(X, c))
    np.testing.assert_array_equal(fitted.score(X), loaded.score(X))
    assert loaded.thresholds_ == fitted.thresholds_ and loaded.threshold_ == fitted.threshold_
    np.testing.assert_array_equal(fitted.explain_rows(X, c).top_features, loaded.explain_rows(X, c).top_features)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_detector(blob[:-1] + b"x", manifest)


def test_planted_anomaly_and_class_swap_score_above_their_class_threshold(fitted: GaussDetector) -> None:
    X, c = _make_data(100, seed=7)
    scores = fitted.score(X, c)
    for name in CLASSES:
        rows = c == name
        assert (scores[rows] > fitted.thresholds_[name]).mean() < 0.05  # normals stay under
        planted = X[rows][:1] + np.array([6.0, -6.0, 6.0, -6.0, 6.0], dtype=np.float32)
        assert fitted.score(planted, [name])[0] > max(scores[rows].max(), fitted.thresholds_[name])
    swapped = fitted.score(X[c == "disk"], "cpu")  # disk events claiming to be cpu
    assert (swapped > fitted.thresholds_["cpu"]).mean() > 0.95
    assert (fitted.score(X[c == "disk"]) > fitted.threshold_).mean() < 0.05  # class-agnostic: normal
    assert (fitted.predict_class(X) == c).mean() > 0.95


def test_explain_rows_contributions_sum_to_the_nll_above_the_class_minimum(fitted: GaussDetector) -> None:
    X, c = _make_data(10, seed=8)
    exp = fitted.explain_rows(X, c, n_top=5)  # all 5 features: contributions sum to the Mahalanobis part
    np.testing.assert_allclose(exp.score, fitted.score(X, c), rtol=1e-5)
    idx = [fitted.classes_.index(v) for v in c]
    dim = fitted.means_.shape[1]
    log_det = 2.0 * np.log(np.diagonal(fitted.cholesky_, axis1=1, axis2=2)).sum(1)
    floor = 0.5 * log_det[idx] / dim + 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(exp.top_contributions.sum(1), exp.score - floor, rtol=1e-4, atol=1e-5)
    assert exp.score_name == "class_nll" and np.all(exp.components["claimed_vs_best_gap"] >= 0)
    empty = fitted.explain_rows(X[:0], [], n_top=3)
    assert empty.score.shape == (0,) and empty.top_features is not None and empty.top_features.shape == (0, 3)


def test_a_singleton_class_borrows_the_pooled_covariance() -> None:
    X, c = _make_data(60, seed=9)
    X = np.r_[X, X[:1] + 10]
    c = np.r_[c, ["rare"]]
    det = GaussDetector(random_state=0).fit(X, c)
    assert np.isfinite(det.score(X, c)).all()
    assert det.training_summary_["calibrated_on_train"] == ["rare"]


def test_errors_name_the_problem() -> None:
    with pytest.raises(NotFittedError, match="Call fit"):
        GaussDetector().score(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"'shrinkage' parameter of GaussDetector must be a float in \[0, 1\] or None"):
        GaussDetector(shrinkage=2.0).fit(np.zeros((4, 3)), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="every training row needs a class"):
        GaussDetector().fit(np.zeros((2, 3)), [None, "a"])
