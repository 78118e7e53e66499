"""Metrics for detectors, the label-stream disagreement alarm, and the promotion gate.

AUC-PR is reported both as the trapezoidal area under the precision-recall curve (what the MNP
reference code computes, ``auc(recall, precision)``) and as average precision (scikit-learn's
step-wise estimate, which does not interpolate optimistically). They differ by a few points.

Why the gate does not trust the label stream alone: held-back labels come from the same stream
the candidate trained on. Whoever poisons that stream (e.g. labels real attacks "normal") poisons
the held-back part the same way, and a candidate that learned the lie looks *better* on it. Two
defences sit on evidence the poisoner does not control:

- **trusted labels** (audit labels, drawn at random from traffic without looking at scores, and
  labels an operator pinned) are never trained on; when there are enough of them they, not the
  held-back labels, decide whether the candidate is worse (:func:`promotion_gate`);
- **the disagreement alarm** (:func:`label_disagreement`) compares the share of new labels that
  contradict the champion's confident scores (alerted but labelled normal, or scored among the
  quietest half of traffic but labelled anomaly) with the share in earlier, unalarmed runs. A
  jump that is both large and statistically clear rejects the candidate.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

__all__ = ["GateDecision", "LabelDisagreement", "ModelEvidence", "TrustedEvidence", "auc_pr_trapz", "detection_metrics",
           "label_disagreement", "model_evidence", "precision_at_budget", "promotion_gate", "threshold_for_budget",
           "threshold_for_precision"]


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


@dataclass(frozen=True)
class LabelDisagreement:
    """How often new labels contradict the champion's confident scores, against the history.

    ``alarm`` is set when the new share exceeds the historical share by at least the allowed jump
    *and* a one-sided two-proportion z-test says the difference is not chance (``z``).
    ``contradicting_ids`` are the new labels that disagree (quarantined when the alarm fires).
    """

    n_confident: int
    n_contradicting: int
    baseline_confident: int
    baseline_contradicting: int
    z: float
    alarm: bool
    reason: str
    by_analyst: dict[str, list[int]] = field(default_factory=dict)  # analyst -> [confident, contradicting]
    contradicting_ids: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.n_contradicting / self.n_confident if self.n_confident else float("nan")

    @property
    def baseline_share(self) -> float:
        return self.baseline_contradicting / self.baseline_confident if self.baseline_confident else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "reason": self.reason, "share": _finite_or_none(self.share),
                "baseline_share": _finite_or_none(self.baseline_share), "z": _finite_or_none(self.z),
                "n_confident": self.n_confident, "n_contradicting": self.n_contradicting,
                "baseline_confident": self.baseline_confident, "baseline_contradicting": self.baseline_contradicting,
                "by_analyst": self.by_analyst}


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def label_disagreement(event_ids: Sequence[str], y: npt.ArrayLike, champion_scores: npt.ArrayLike,
                       analysts: Sequence[str], *, threshold: float, quiet_below: float,
                       baseline: tuple[int, int], max_jump: float, z_alarm: float,
                       min_confident: int) -> LabelDisagreement:
    """Contradictions of new labels with the champion's confident calls, compared with ``baseline``.

    Confident calls: score >= ``threshold`` (the champion alerts) or < ``quiet_below`` (among the
    quietest traffic). A label contradicts when an alerted event is labelled normal or a quiet one
    anomaly. ``baseline`` is (confident, contradicting) summed over earlier unalarmed runs, each
    measured against the champion of its time, which had not trained on those labels either (as
    the champion now has not trained on the new ones), so the two shares are comparable. No alarm
    is possible with fewer than ``min_confident`` confident labels on either side: the first runs
    set the baseline, and the trusted-label check is what guards them.

    Examples
    --------
    >>> y = [0] * 12 + [1] * 8                    # 12 of 20 alerted events labelled normal
    >>> d = label_disagreement([f"e{i}" for i in range(20)], y, [0.9] * 20, ["ann"] * 20, threshold=0.5,
    ...                        quiet_below=0.1, baseline=(200, 20), max_jump=0.1, z_alarm=3.0, min_confident=10)
    >>> d.alarm, round(d.share, 2), round(d.baseline_share, 2)
    (True, 0.6, 0.1)
    """
    labels = np.asarray(y).astype(int)
    scores = np.asarray(champion_scores, dtype=np.float64)
    alerted, quiet = scores >= threshold, scores < quiet_below
    confident = alerted | quiet
    contradicting = (alerted & (labels == 0)) | (quiet & (labels == 1))
    n1, k1 = int(confident.sum()), int(contradicting.sum())
    n0, k0 = baseline
    by_analyst: dict[str, list[int]] = {}
    for who, conf, contra in zip(analysts, confident.tolist(), contradicting.tolist()):
        counts = by_analyst.setdefault(who, [0, 0])
        counts[0] += int(conf)
        counts[1] += int(contra)
    ids = [e for e, c in zip(event_ids, contradicting.tolist()) if c]
    if n1 < min_confident or n0 < min_confident:
        reason = (f"not compared: {n1} confident new labels, {n0} in the history (need {min_confident} each)")
        return LabelDisagreement(n1, k1, n0, k0, float("nan"), False, reason, by_analyst, ids)
    p1, p0 = k1 / n1, k0 / n0
    pooled = (k0 + k1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    z = (p1 - p0) / se if se > 0 else (math.inf if p1 > p0 else 0.0)
    alarm = p1 - p0 >= max_jump and z >= z_alarm
    verdict = "ALARM" if alarm else "ok"
    reason = (f"{verdict}: {k1} of {n1} confident new labels contradict the champion ({p1:.1%}) vs "
              f"{k0} of {n0} before ({p0:.1%}); jump {p1 - p0:+.1%} (alarm at >= {max_jump:.0%}), z {z:.1f} "
              f"(alarm at >= {z_alarm:g})")
    return LabelDisagreement(n1, k1, n0, k0, z, alarm, reason, by_analyst, ids)


def _fmt(value: float) -> str:
    return "no alerts among them" if not np.isfinite(value) else f"{value:.3f}"


@dataclass(frozen=True)
class TrustedEvidence:
    """Both models on the trusted labels (audit + pinned), which no model trained on."""

    candidate: ModelEvidence
    champion: ModelEvidence

    def is_enough(self, min_labels: int, min_anomalies: int) -> bool:
        ev = self.candidate
        return ev.n_labels >= min_labels and ev.n_anomalies >= min_anomalies and ev.n_labels > ev.n_anomalies


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, why, and the evidence (recorded in the candidate's manifest)."""

    promote: bool
    reason: str
    candidate: ModelEvidence
    champion: ModelEvidence | None
    checks: dict[str, bool] = field(default_factory=dict)
    trusted: TrustedEvidence | None = None
    disagreement: LabelDisagreement | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision": "promote" if self.promote else "reject", "reason": self.reason,
            "candidate": self.candidate.as_dict(), "champion": self.champion.as_dict() if self.champion else None,
            "checks": self.checks}
        if self.trusted is not None:
            out["trusted"] = {"candidate": self.trusted.candidate.as_dict(), "champion": self.trusted.champion.as_dict()}
        if self.disagreement is not None:
            out["label_disagreement"] = self.disagreement.as_dict()
        return out


def promotion_gate(candidate: ModelEvidence, champion: ModelEvidence | None, *, alert_budget: float,
                   min_labels: int, tolerance: float, trusted: TrustedEvidence | None = None,
                   disagreement: LabelDisagreement | None = None, min_trusted_anomalies: int = 5) -> GateDecision:
    """Promote only a candidate that is measurably not worse than the champion, on evidence it did not poison.

    Checks, in order:

    1. alert rate on recent traffic <= 1.5 x the budget (a threshold calibrated on a pool that
       shifted); without a champion that is all (the first model);
    2. the label stream's disagreement alarm (:func:`label_disagreement`): an alarm rejects,
       whatever the metrics say, because every label-based metric may be poisoned with it;
    3. with enough **trusted** labels (``min_labels``, at least ``min_trusted_anomalies``
       anomalies, both classes): AUC-PR on them >= champion's - tolerance. They decide alone:
       held-back labels share the training labels' selection bias and whatever poisoned them;
    4. otherwise the **held-back** labels: AUC-PR and precision of its alerts >= champion's -
       tolerance; with fewer than ``min_labels`` or a single class, reject: no evidence is not
       "not worse".
    """
    budget_ok = not (candidate.alert_rate > 1.5 * alert_budget)
    extras: dict[str, Any] = {"trusted": trusted, "disagreement": disagreement}
    if champion is None:
        return GateDecision(budget_ok, "first model" if budget_ok else "alert rate above 1.5 x budget",
                            candidate, None, {"alert_rate": budget_ok}, **extras)
    if disagreement is not None and disagreement.alarm:
        return GateDecision(False, f"label stream disagreement alarm ({disagreement.reason}); the contradicting "
                                   f"labels are quarantined: review them, then `protoguard labels release|pin`",
                            candidate, champion, {"label_disagreement": False, "alert_rate": budget_ok}, **extras)
    if trusted is not None and trusted.is_enough(min_labels, min_trusted_anomalies):
        cand, champ = trusted.candidate, trusted.champion
        checks = {"trusted_auc_pr": cand.auc_pr >= champ.auc_pr - tolerance, "alert_rate": budget_ok}
        if disagreement is not None:
            checks["label_disagreement"] = True
        if not all(checks.values()):
            detail = (f"trusted AUC-PR: candidate {_fmt(cand.auc_pr)} vs champion {_fmt(champ.auc_pr)}"
                      if not checks["trusted_auc_pr"] else f"alert rate {candidate.alert_rate:.3f}")
            return GateDecision(False, f"worse than the champion on trusted labels ({detail}; {cand.n_labels} "
                                       f"labels, {cand.n_anomalies} anomalies)", candidate, champion, checks, **extras)
        return GateDecision(True, f"not worse on trusted labels (AUC-PR {cand.auc_pr:.3f} vs {champ.auc_pr:.3f}, "
                                  f"{cand.n_labels} labels)", candidate, champion, checks, **extras)
    n_normals = candidate.n_labels - candidate.n_anomalies
    if candidate.n_labels < min_labels or candidate.n_anomalies == 0 or n_normals == 0:
        return GateDecision(False, f"too few held-back labels to compare ({candidate.n_labels} labels, "
                                   f"{candidate.n_anomalies} anomalies; need >= {min_labels} with both classes)",
                            candidate, champion, {}, **extras)
    checks = {"auc_pr": candidate.auc_pr >= champion.auc_pr - tolerance, "alert_rate": budget_ok}
    if np.isfinite(candidate.precision) and np.isfinite(champion.precision):
        checks["precision"] = candidate.precision >= champion.precision - tolerance
    elif np.isfinite(champion.precision):  # the champion alerts on held-back events, the candidate on none
        checks["precision"] = champion.precision <= tolerance
    if disagreement is not None:
        checks["label_disagreement"] = True
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        detail = ", ".join(f"{n}: candidate {_fmt(getattr(candidate, n))} vs champion {_fmt(getattr(champion, n))}"
                           for n in failed)
        return GateDecision(False, f"worse than the champion ({detail})", candidate, champion, checks, **extras)
    return GateDecision(True, f"not worse (AUC-PR {candidate.auc_pr:.3f} vs {champion.auc_pr:.3f})", candidate, champion,
                        checks, **extras)
