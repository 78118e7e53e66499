"""trainer/training.py's steps without fitting: the training-data summary, the budget calibration and what
finalize_manifest writes into (and keeps from) a detector's manifest. fit_mnp runs in the detector tests."""
from __future__ import annotations

import numpy as np
import pytest

from protoguard.schemas.errors import ConfigError
from protoguard.schemas.manifest import ModelManifest, ThresholdCalibration
from protoguard.trainer.training import TrainingData, calibrate, finalize_manifest


def test_summary_counts_each_source() -> None:
    data = TrainingData(X_unlabelled=np.zeros((7, 2), np.float32), X_anomalies=np.zeros((3, 2), np.float32),
                        X_normals=np.zeros((0, 2), np.float32), feature_names=["a", "b"])
    assert data.summary() == {"n_unlabelled": 7, "n_labelled_anomalies": 3, "n_confirmed_normals": 0}


@pytest.mark.parametrize("budget", [0.01, 0.02, 0.1])
def test_calibration_alerts_the_budget_share_and_records_how(budget: float) -> None:
    scores = np.random.default_rng(1).exponential(size=2000).astype(np.float32)
    threshold, calibration = calibrate(scores, alert_budget=budget)
    assert abs((scores > threshold).mean() - budget) <= 1 / len(scores)
    assert calibration == ThresholdCalibration(method="alert_budget", target=budget, n_samples=2000)


def _manifest(**fields: object) -> ModelManifest:
    return ModelManifest(detector="gauss", feature_names=["a", "b"], **fields)  # type: ignore[arg-type]


def test_finalize_sets_threshold_calibration_metrics_and_parent_and_merges_the_summary() -> None:
    original = _manifest(params={"k": 3}, training_summary={"fit_time_s": 1.5, "n_unlabelled": 1},
                         weights_sha256="ab" * 32)
    calibration = ThresholdCalibration(method="alert_budget", target=0.02, n_samples=100)
    final = finalize_manifest(original, threshold=0.75, calibration=calibration, summary={"n_unlabelled": 100},
                              metrics={"auc_pr": 0.6}, parent_version="v3")
    assert (final.threshold, final.calibration, final.metrics, final.parent_version) == (
        0.75, calibration, {"auc_pr": 0.6}, "v3")
    assert final.training_summary == {"fit_time_s": 1.5, "n_unlabelled": 100}  # the run's counts win
    assert (final.params, final.weights_sha256, final.detector, final.feature_names) == (
        {"k": 3}, "ab" * 32, "gauss", ["a", "b"])  # what the detector wrote is kept


def test_finalize_returns_a_new_manifest_and_leaves_the_detectors_untouched() -> None:
    original = _manifest()
    final = finalize_manifest(original, threshold=1.0, calibration=ThresholdCalibration(method="manual"), summary={})
    assert original.threshold is None and original.calibration.method == "none"
    assert final.threshold == 1.0 and final.metrics == {} and final.parent_version is None
    assert ModelManifest.model_validate_json(final.model_dump_json()) == final  # still a valid manifest


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_calibration_refuses_a_non_finite_reference_score(bad: float) -> None:
    """A NaN quantile would be stored as "no threshold": a model that never alerts."""
    scores = np.linspace(0, 1, 100).astype(np.float32)
    scores[7] = bad
    with pytest.raises(ConfigError, match=r"100 reference scores \(1 NaN or infinite\)"):
        calibrate(scores, alert_budget=0.02)
    with pytest.raises(ConfigError, match="0 reference scores"):
        calibrate(np.empty(0, np.float32), alert_budget=0.02)
