"""Metrics for detectors: AUC-PR two ways, AUC-ROC, precision at an alert budget.

AUC-PR is reported both as the trapezoidal area under the precision-recall curve (what the MNP
reference code computes, ``auc(recall, precision)``) and as average precision (scikit-learn's
step-wise estimate, which does not interpolate optimistically). They differ by a few points.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

__all__ = ["auc_pr_trapz", "detection_metrics", "precision_at_budget", "threshold_for_budget"]


def auc_pr_trapz(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Trapezoidal area under the precision-recall curve (the MNP reference code's AUC-PR)."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(auc(recall, precision))


def threshold_for_budget(scores: npt.ArrayLike, alert_budget: float) -> float:
    """The score above which ``alert_budget`` (a share, e.g. 0.02) of ``scores`` lie."""
    values = np.asarray(scores, dtype=np.float64)
    return float(np.quantile(values, 1.0 - alert_budget))


def precision_at_budget(y_true: npt.ArrayLike, scores: npt.ArrayLike, alert_budget: float) -> float:
    """Precision among the top ``alert_budget`` share of events (at least one event)."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    n_top = max(1, int(round(alert_budget * len(s))))
    top = np.argsort(-s, kind="stable")[:n_top]
    return float(y[top].mean())


def detection_metrics(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, float]:
    """AUC-PR (average precision and trapezoid) and AUC-ROC; NaN when only one class is present."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.min() == y.max() or not np.all(np.isfinite(s)):
        return {"auc_pr": float("nan"), "auc_pr_trapz": float("nan"), "auc_roc": float("nan")}
    return {
        "auc_pr": float(average_precision_score(y, s)),
        "auc_pr_trapz": auc_pr_trapz(y, s),
        "auc_roc": float(roc_auc_score(y, s)),
    }
