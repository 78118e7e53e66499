"""Fit a candidate from arrays, calibrate its threshold, and build its manifest. No I/O.

The label loop and ``protoguard train`` share these steps, so a model fitted offline and one
fitted by the scheduler are made the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..schemas.errors import ConfigError
from ..schemas.manifest import ModelManifest, ThresholdCalibration
from .detectors.mnp import MNPDetector
from .evaluation import threshold_for_budget

__all__ = ["PRODUCT_MNP_PARAMS", "TrainingData", "calibrate", "finalize_manifest", "fit_mnp"]

#: Product defaults for retraining: the fixed variant with the label-frugal validation (no
#: labelled validation set exists in production), three averaged members (as ``trainer.n_members``),
#: hold-out early stopping, the class defaults' 200-epoch budget with patience 15 (as
#: ``trainer.n_epochs``), and the scaled raw features to the scorer when a single anomaly is labelled.
#: Chosen on the validation part in issue 12's fifth round (``benchmarks/results/dev/issue12_round5_c9.md``:
#: 16-dataset mean 0.600 vs 0.575 for the 30-epoch budget without raw features, spread 0.012); the
#: longer budget costs 3-7x the fit time. Weighting: the spec's form. "adaptive" was chosen once
#: (issue12_decision.md), but the contamination benchmark found it no better than none, so the
#: default stays the spec's ("adaptive" and "rank" are one setting away: trainer.weighting).
#: With a single labelled anomaly nothing can be held out, so the joint stage runs a fixed 10 epochs:
#: the best of 10 / 20 / 50 / 100 on the validation part in round 8 (``issue12_round8_single_label_epochs.md``;
#: the class default 20 was once chosen on test scores and is kept only so old rows reproduce), at
#: Adam rate 0.001 instead of the spec's 0.005: with one labelled row a smaller step fits it less
#: closely (round 12, ``issue12_round12_single_label_lr.md``: validation 0.769 vs 0.729 on the four
#: single-label sets, confirmed on fresh seeds; with 2+ labels a smaller rate lost, round 10).
#: With 2 or more labelled anomalies each member screens its unlabelled pool first: the rank rule's
#: estimated contamination share of least-normal rows is left out and the member is pretrained again
#: on the rest (round 15, ``issue12_round15_screen_product.md``: 12-set validation 0.582 vs 0.557,
#: spread 0.012; about twice the pretraining time).
PRODUCT_MNP_PARAMS: dict[str, Any] = {"variant": "fixed", "validation": "frugal", "max_epochs": 200,
                                      "pretrain_max_epochs": 200, "patience": 15, "n_members": 3,
                                      "weighting": "spec", "joint_stopping": "holdout", "scorer_features": "auto",
                                      "single_label_epochs": 10, "single_label_joint_lr": 0.001, "screen_pool": True}


@dataclass(frozen=True)
class TrainingData:
    """The three sources of a training run (raw, unscaled features in manifest order)."""

    X_unlabelled: npt.NDArray[np.float32]
    X_anomalies: npt.NDArray[np.float32]
    X_normals: npt.NDArray[np.float32]
    feature_names: Sequence[str]

    def summary(self) -> dict[str, int]:
        return {"n_unlabelled": len(self.X_unlabelled), "n_labelled_anomalies": len(self.X_anomalies),
                "n_confirmed_normals": len(self.X_normals)}


def fit_mnp(data: TrainingData, *, params: dict[str, Any] | None = None, warm_start: MNPDetector | None = None,
            random_state: int | None = None) -> MNPDetector:
    """Fit MNP: labelled anomalies as X_A, the reservoir as X_U, confirmed normals with weight 1.

    ``warm_start`` is dropped when its scorer takes other inputs than this fit's would."""
    X = np.concatenate([data.X_unlabelled, data.X_anomalies]).astype(np.float32)
    y = np.concatenate([np.zeros(len(data.X_unlabelled)), np.ones(len(data.X_anomalies))]).astype(np.int64)
    detector = MNPDetector(**{**PRODUCT_MNP_PARAMS, **(params or {}), "random_state": random_state})
    if warm_start is not None and warm_start.scorer_features_ != detector.scorer_features_for(len(data.X_anomalies)):
        # "auto" picks the scorer's inputs by the label count (one labelled anomaly: raw features as
        # well), and a warm start keeps the champion's: once the labels cross that line, start fresh.
        warm_start = None
    X_normal = data.X_normals if len(data.X_normals) else None
    return detector.fit(X, y, X_normal=X_normal, feature_names=list(data.feature_names), warm_start=warm_start)


def calibrate(scores: npt.NDArray[np.float32], *, alert_budget: float) -> tuple[float, ThresholdCalibration]:
    """Threshold so that ``alert_budget`` of the reference traffic alerts.

    A non-finite reference score would make the quantile NaN, which the manifest stores as "no
    threshold": a model that never alerts. That is refused here, before anything is registered.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        bad = int(values.size - np.isfinite(values).sum())
        raise ConfigError(f"cannot calibrate a threshold on {values.size} reference scores ({bad} NaN or infinite): "
                          "a model must score every reference row with a finite number")
    threshold = threshold_for_budget(values, alert_budget)
    return threshold, ThresholdCalibration(method="alert_budget", target=alert_budget, n_samples=len(scores))


def finalize_manifest(manifest: ModelManifest, *, threshold: float, calibration: ThresholdCalibration,
                      summary: dict[str, Any], metrics: dict[str, Any] | None = None,
                      parent_version: str | None = None) -> ModelManifest:
    return manifest.model_copy(update={
        "threshold": threshold, "calibration": calibration,
        "training_summary": {**manifest.training_summary, **summary},
        "metrics": metrics or {}, "parent_version": parent_version,
    })
