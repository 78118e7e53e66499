"""trainer/evaluation.py: the budget threshold, precision among the top alerts, the detection metrics, and
the promotion gate's cases that test_label_loop_logic.py leaves out (first model over budget, a candidate
that alerts on no held-back event, what counts as enough trusted labels, the recorded decision)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from protoguard.trainer.evaluation import (
    ModelEvidence,
    TrustedEvidence,
    auc_pr_trapz,
    detection_metrics,
    precision_at_budget,
    promotion_gate,
    threshold_for_budget,
)


def _ev(auc_pr: float = 0.8, precision: float = 0.8, alert_rate: float = 0.02, n: int = 40, n_anom: int = 10) -> ModelEvidence:
    return ModelEvidence(auc_pr=auc_pr, precision=precision, alert_rate=alert_rate, n_labels=n, n_anomalies=n_anom)


# ---------------------------------------------------------------- thresholds and metrics
@pytest.mark.parametrize(("n", "budget"), [(1000, 0.02), (997, 0.05), (5000, 0.001), (300, 0.1)])
def test_the_budget_threshold_has_that_share_of_the_scores_above_it(n: int, budget: float) -> None:
    scores = np.random.default_rng(n).normal(size=n).astype(np.float32)
    threshold = threshold_for_budget(scores, budget)
    assert isinstance(threshold, float)
    assert abs((scores > threshold).sum() - budget * n) <= 1


def test_a_zero_budget_puts_the_threshold_at_the_top_score() -> None:
    assert threshold_for_budget([3.0, 1.0, 7.5, 2.0], 0.0) == 7.5
    assert threshold_for_budget([3.0, 1.0, 7.5, 2.0], 1.0) == 1.0


def test_precision_at_budget_counts_anomalies_among_the_top_share() -> None:
    y = [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.0, 0.05, 0.15, 0.6]
    assert precision_at_budget(y, s, 0.2) == 0.5  # top 2: 0.9 (anomaly), 0.8 (normal)
    assert precision_at_budget(y, s, 0.4) == 0.75  # top 4 add 0.7 and 0.6, both anomalies
    assert precision_at_budget(y, s, 0.001) == 1.0  # at least one event: the top one


def test_precision_at_budget_breaks_ties_by_position() -> None:
    assert precision_at_budget([1, 0], [0.5, 0.5], 0.5) == 1.0
    assert precision_at_budget([0, 1], [0.5, 0.5], 0.5) == 0.0


def test_detection_metrics_on_a_hand_checked_example() -> None:
    # ranked: 0.8 anomaly, 0.4 normal, 0.35 anomaly, 0.1 normal
    metrics = detection_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert metrics["auc_roc"] == pytest.approx(0.75)  # 3 of 4 anomaly-normal pairs ordered right
    assert metrics["auc_pr"] == pytest.approx((1 + 2 / 3) / 2)  # precision at each anomaly, averaged
    assert metrics["auc_pr_trapz"] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)  # interpolates (0.5, .5)-(1, 2/3)
    assert metrics["auc_pr_trapz"] == pytest.approx(auc_pr_trapz([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]))


def test_a_perfect_ranking_scores_one_everywhere() -> None:
    metrics = detection_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics == pytest.approx({"auc_pr": 1.0, "auc_pr_trapz": 1.0, "auc_roc": 1.0})


@pytest.mark.parametrize(("y", "s"), [([0, 0, 0], [0.1, 0.2, 0.3]), ([1, 1], [0.1, 0.2]), ([0, 1], [0.1, float("nan")]),
                                      ([0, 1], [0.1, float("inf")])])
def test_detection_metrics_are_nan_with_one_class_or_non_finite_scores(y: list[int], s: list[float]) -> None:
    assert all(math.isnan(v) for v in detection_metrics(y, s).values())


# ---------------------------------------------------------------- the promotion gate
def test_a_first_model_is_promoted_up_to_one_and_a_half_times_the_budget() -> None:
    at_limit = promotion_gate(_ev(alert_rate=0.03), None, alert_budget=0.02, min_labels=10, tolerance=0.01)
    over = promotion_gate(_ev(alert_rate=0.0301), None, alert_budget=0.02, min_labels=10, tolerance=0.01)
    assert at_limit.promote and at_limit.reason == "first model"
    assert not over.promote and "1.5 x budget" in over.reason and over.checks == {"alert_rate": False}


def test_a_first_model_needs_no_labels() -> None:
    assert promotion_gate(_ev(n=0, n_anom=0), None, alert_budget=0.02, min_labels=100, tolerance=0.0).promote


@pytest.mark.parametrize(("champion_precision", "promote"), [(0.005, True), (0.5, False)])
def test_a_candidate_alerting_on_no_held_back_event_passes_only_against_a_champion_as_imprecise(
        champion_precision: float, promote: bool) -> None:
    decision = promotion_gate(_ev(0.8, precision=float("nan")), _ev(0.8, precision=champion_precision),
                              alert_budget=0.02, min_labels=10, tolerance=0.01)
    assert decision.promote is promote and decision.checks["precision"] is promote
    if not promote:
        assert "no alerts among them" in decision.reason


def test_precision_is_not_compared_when_the_champion_alerts_on_no_held_back_event() -> None:
    decision = promotion_gate(_ev(0.8, precision=float("nan")), _ev(0.8, precision=float("nan")),
                              alert_budget=0.02, min_labels=10, tolerance=0.01)
    assert decision.promote and "precision" not in decision.checks


@pytest.mark.parametrize(("n", "n_anom", "min_labels", "enough"), [
    (60, 8, 40, True), (30, 8, 40, False), (30, 8, 8, True), (60, 4, 40, False), (8, 8, 8, False),  # no normals
])
def test_trusted_labels_are_enough_with_the_minimum_count_anomalies_and_normals(n: int, n_anom: int, min_labels: int,
                                                                                 enough: bool) -> None:
    trusted = TrustedEvidence(candidate=_ev(n=n, n_anom=n_anom), champion=_ev(n=n, n_anom=n_anom))
    assert trusted.is_enough(min_labels=min_labels, min_anomalies=5) is enough


def test_the_recorded_decision_carries_both_models_and_the_trusted_evidence() -> None:
    trusted = TrustedEvidence(candidate=_ev(0.40, n=60, n_anom=8), champion=_ev(0.55, n=60, n_anom=8))
    record = promotion_gate(_ev(0.9), _ev(0.7), alert_budget=0.02, min_labels=10, tolerance=0.01,
                            trusted=trusted).as_dict()
    assert record["decision"] == "reject" and record["checks"] == {"trusted_auc_pr": False, "alert_rate": True}
    assert record["candidate"]["auc_pr"] == 0.9 and record["champion"]["auc_pr"] == 0.7
    assert record["trusted"]["candidate"]["auc_pr"] == 0.40 and "label_disagreement" not in record
