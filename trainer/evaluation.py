"""Metrics for detectors: AUC-PR two ways, AUC-ROC, precision at an alert budget.

AUC-PR is reported both as the trapezoidal area under the precision-recall curve (what the MNP
reference code computes, ``auc(recall, precision)``) and as average precision (scikit-learn's
step-wise estimate, which does not interpolate optimistically). They differ by a few points.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

__all__ = ["GateDecision", "ModelEvidence", "auc_pr_trapz", "detection_metrics", "model_evidence", "precision_at_budget",
           "promotion_gate", "threshold_for_budget", "threshold_for_precision"]


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


def threshold_for_precision(y_true: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> float | None:
    """The lowest threshold whose alerts (score >= threshold) reach ``target`` precision, or None.

    "Lowest" because it alerts most among the thresholds that are precise enough.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) == 0 or y.max() == 0:
        return None
    precision, _, thresholds = precision_recall_curve(y, s)
    ok = np.flatnonzero(precision[:-1] >= target)
    return float(thresholds[ok[0]]) if len(ok) else None


@dataclass(frozen=True)
class ModelEvidence:
    """What the gate knows about one model: metrics on held-back labels and on recent traffic."""

    auc_pr: float  # average precision on the held-back labels (NaN without both classes)
    precision: float  # precision of its alerts among the held-back labels (NaN if none alerts)
    alert_rate: float  # share of recent unlabelled traffic at or above its threshold
    n_labels: int
    n_anomalies: int

    def as_dict(self) -> dict[str, float | int]:
        return {"auc_pr": self.auc_pr, "precision": self.precision, "alert_rate": self.alert_rate,
                "n_labels": self.n_labels, "n_anomalies": self.n_anomalies}


def model_evidence(y_holdout: npt.ArrayLike, holdout_scores: npt.ArrayLike, traffic_scores: npt.ArrayLike,
                   threshold: float) -> ModelEvidence:
    y = np.asarray(y_holdout).astype(int)
    s = np.asarray(holdout_scores, dtype=np.float64)
    traffic = np.asarray(traffic_scores, dtype=np.float64)
    both = len(y) > 0 and 0 < y.sum() < len(y)
    alerted = s >= threshold
    return ModelEvidence(
        auc_pr=float(average_precision_score(y, s)) if both else float("nan"),
        precision=float(y[alerted].mean()) if alerted.any() else float("nan"),
        alert_rate=float((traffic >= threshold).mean()) if len(traffic) else float("nan"),
        n_labels=int(len(y)), n_anomalies=int(y.sum()),
    )


def _fmt(value: float) -> str:
    return "no alerts among them" if not np.isfinite(value) else f"{value:.3f}"


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, why, and the evidence (recorded in the candidate's manifest)."""

    promote: bool
    reason: str
    candidate: ModelEvidence
    champion: ModelEvidence | None
    checks: dict[str, bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"decision": "promote" if self.promote else "reject", "reason": self.reason,
                "candidate": self.candidate.as_dict(), "champion": self.champion.as_dict() if self.champion else None,
                "checks": self.checks}


def promotion_gate(candidate: ModelEvidence, champion: ModelEvidence | None, *, alert_budget: float,
                   min_labels: int, tolerance: float) -> GateDecision:
    """Promote only a candidate that is measurably not worse than the champion.

    Checks: AUC-PR on held-back labels >= champion's - tolerance; precision of its alerts >=
    champion's - tolerance (when both alert on any held-back event); alert rate on recent
    traffic <= 1.5 x the budget (a threshold calibrated on a pool that shifted). Without a
    champion the candidate is promoted (the first model). With fewer than ``min_labels``
    held-back labels, or a single class among them, the models cannot be compared and the
    candidate is rejected: no evidence is not "not worse".
    """
    budget_ok = not (candidate.alert_rate > 1.5 * alert_budget)
    if champion is None:
        return GateDecision(budget_ok, "first model" if budget_ok else "alert rate above 1.5 x budget",
                            candidate, None, {"alert_rate": budget_ok})
    n_normals = candidate.n_labels - candidate.n_anomalies
    if candidate.n_labels < min_labels or candidate.n_anomalies == 0 or n_normals == 0:
        return GateDecision(False, f"too few held-back labels to compare ({candidate.n_labels} labels, "
                                   f"{candidate.n_anomalies} anomalies; need >= {min_labels} with both classes)",
                            candidate, champion, {})
    checks = {"auc_pr": candidate.auc_pr >= champion.auc_pr - tolerance, "alert_rate": budget_ok}
    if np.isfinite(candidate.precision) and np.isfinite(champion.precision):
        checks["precision"] = candidate.precision >= champion.precision - tolerance
    elif np.isfinite(champion.precision):  # the champion alerts on held-back events, the candidate on none
        checks["precision"] = champion.precision <= tolerance
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        detail = ", ".join(f"{n}: candidate {_fmt(getattr(candidate, n))} vs champion {_fmt(getattr(champion, n))}"
                           for n in failed)
        return GateDecision(False, f"worse than the champion ({detail})", candidate, champion, checks)
    return GateDecision(True, f"not worse (AUC-PR {candidate.auc_pr:.3f} vs {champion.auc_pr:.3f})", candidate, champion, checks)
