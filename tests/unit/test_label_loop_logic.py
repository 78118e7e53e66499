"""Pure parts of the label loop: the promotion gate, threshold calibration, hold-back, label decoding."""
from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from protoguard.schemas.settings import TrainerSettings
from protoguard.stream.labels import decode_labels
from protoguard.schemas.events import Label
from protoguard.trainer.evaluation import (
    LabelDisagreement,
    ModelEvidence,
    TrustedEvidence,
    label_disagreement,
    model_evidence,
    promotion_gate,
    threshold_for_precision,
)
from protoguard.trainer.retraining import calibrate_threshold
from protoguard.trainer.store import LabelSet, is_held_back


def _ev(auc_pr: float, precision: float = 0.8, alert_rate: float = 0.02, n: int = 40, n_anom: int = 10) -> ModelEvidence:
    return ModelEvidence(auc_pr=auc_pr, precision=precision, alert_rate=alert_rate, n_labels=n, n_anomalies=n_anom)


def test_gate_promotes_a_first_model_and_an_equal_or_better_candidate() -> None:
    assert promotion_gate(_ev(0.5), None, alert_budget=0.02, min_labels=10, tolerance=0.01).promote
    assert promotion_gate(_ev(0.70), _ev(0.705), alert_budget=0.02, min_labels=10, tolerance=0.01).promote
    decision = promotion_gate(_ev(0.9, 0.9), _ev(0.7, 0.8), alert_budget=0.02, min_labels=10, tolerance=0.01)
    assert decision.promote and decision.as_dict()["decision"] == "promote"


@pytest.mark.parametrize("candidate, reason", [
    (_ev(0.60), "auc_pr"),                     # clearly lower AUC-PR
    (_ev(0.90, precision=0.5), "precision"),   # better ranking but worse precision at its threshold
    (_ev(0.90, alert_rate=0.05), "alert_rate"),  # would flood analysts
])
def test_gate_rejects_a_worse_candidate_and_names_the_check(candidate: ModelEvidence, reason: str) -> None:
    decision = promotion_gate(candidate, _ev(0.8), alert_budget=0.02, min_labels=10, tolerance=0.01)
    assert not decision.promote
    assert decision.checks[reason] is False and reason in decision.reason


def test_gate_rejects_without_evidence() -> None:
    few = promotion_gate(_ev(0.9, n=5), _ev(0.1), alert_budget=0.02, min_labels=10, tolerance=0.01)
    one_class = promotion_gate(_ev(0.9, n=40, n_anom=0), _ev(0.1), alert_budget=0.02, min_labels=10, tolerance=0.01)
    assert not few.promote and not one_class.promote
    assert "too few held-back labels" in few.reason


def test_model_evidence_measures_holdout_and_traffic() -> None:
    y = np.array([1, 1, 0, 0, 0])
    ev = model_evidence(y, np.array([0.9, 0.2, 0.8, 0.1, 0.0]), np.linspace(0, 1, 101), threshold=0.75)
    assert ev.precision == pytest.approx(0.5)  # alerts: 0.9 (anomaly), 0.8 (normal)
    assert ev.alert_rate == pytest.approx(26 / 101)  # 0.75, 0.76, ..., 1.0
    assert 0 < ev.auc_pr < 1 and ev.n_labels == 5 and ev.n_anomalies == 2
    assert math.isnan(model_evidence(y, np.zeros(5), np.zeros(3), threshold=1.0).precision)


def test_threshold_for_precision_is_the_lowest_precise_enough() -> None:
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert threshold_for_precision(y, s, 1.0) == pytest.approx(0.8)
    assert threshold_for_precision(y, s, 0.75) == pytest.approx(0.6)  # 3 of 4 alerts are anomalies
    assert threshold_for_precision(np.zeros(3), s[:3], 0.5) is None


def test_calibration_never_alerts_more_than_the_budget() -> None:
    rng = np.random.default_rng(0)
    traffic = rng.random(10_000).astype(np.float32)
    settings = TrainerSettings(alert_budget=0.05, threshold_mode="precision_target", precision_target=0.5, gate_min_labels=4)
    y = np.array([1, 0, 1, 0, 1, 0])
    low_scores = np.array([0.3, 0.2, 0.25, 0.1, 0.35, 0.05], dtype=np.float32)  # precise already at 0.05
    threshold, calibration = calibrate_threshold(traffic, settings=settings, y_labels=y, label_scores=low_scores)
    assert (traffic >= threshold).mean() <= 0.05 + 1e-3
    assert calibration.method == "precision_target"
    budget_only, cal = calibrate_threshold(traffic, settings=TrainerSettings(alert_budget=0.05))
    assert cal.method == "alert_budget" and (traffic >= budget_only).mean() == pytest.approx(0.05, abs=2e-3)


def test_hold_back_is_stable_per_event_and_near_its_fraction() -> None:
    ids = [f"ev-{i}" for i in range(20_000)]
    held = [is_held_back(e, 0.3) for e in ids]
    assert held == [is_held_back(e, 0.3) for e in ids]
    assert abs(np.mean(held) - 0.3) < 0.015
    labels = LabelSet(event_ids=ids[:100], y=np.zeros(100, np.int64), X=np.zeros((100, 2), np.float32), seq=7)
    train, back = labels.split(0.3)
    assert sorted(train.event_ids + back.event_ids) == sorted(ids[:100]) and not set(train.event_ids) & set(back.event_ids)


def test_decode_labels_keeps_good_ones_and_explains_bad_ones() -> None:
    good = orjson.dumps({"event_id": "e1", "label": "anomaly", "analyst": "a", "ts": "2026-01-01T00:00:00Z"})
    values = [good, b"{not json", orjson.dumps({"event_id": "e2", "label": "maybe", "analyst": "a", "ts": 1}), None, b"\xff"]
    labels, rejects = decode_labels(values)
    assert [(i, lab.event_id) for i, lab in labels] == [(0, "e1")]
    assert [(r.index, r.stage) for r in rejects] == [(1, "decode"), (2, "validate"), (3, "decode"), (4, "decode")]
    assert "label" in rejects[1].message


# ---------------------------------------------------------------- poisoning: provenance, trusted labels, the alarm
def test_labels_carry_provenance_and_default_to_manual() -> None:
    old = Label.model_validate_json(b'{"event_id": "e", "label": "normal", "analyst": "a", "ts": "2025-01-01T00:00:00Z"}')
    assert old.source == "manual"
    assert Label(event_id="e", label="anomaly", analyst="a", ts=datetime.now(UTC), source="audit").source == "audit"
    with pytest.raises(ValueError, match="source"):
        Label(event_id="e", label="anomaly", analyst="a", ts=datetime.now(UTC), source="rumour")


def test_trusted_and_quarantined_labels_never_reach_training_or_the_held_back_set() -> None:
    n = 200
    ids = [f"e{i}" for i in range(n)]
    sources = ["audit" if i % 4 == 0 else "alert" for i in range(n)]
    pinned = np.zeros(n, bool)
    pinned[[1, 2]] = True
    quarantined = np.zeros(n, bool)
    quarantined[[3, 5]] = True
    labels = LabelSet(event_ids=ids, y=np.zeros(n, np.int64), X=np.zeros((n, 2), np.float32), seq=9, sources=sources,
                      analysts=["a"] * n, change_seq=np.arange(n, dtype=np.int64), is_pinned=pinned,
                      is_quarantined=quarantined, trained_seq=150)
    train, held = labels.split(0.3)
    trusted = set(labels.trusted().event_ids)
    assert trusted == {e for e, s in zip(ids, sources) if s == "audit"} | {"e1", "e2"}
    assert not (set(train.event_ids) | set(held.event_ids)) & (trusted | {"e3", "e5"})
    assert len(train.event_ids) + len(held.event_ids) + len(trusted) + 2 == n
    new = labels.new_untrusted()
    assert new.event_ids == ids[151:]  # changed after the last training run (seq > 150), none pinned there
    assert LabelSet(event_ids=["x"], y=np.zeros(1, np.int64), X=np.zeros((1, 2), np.float32), seq=1).sources == ["manual"]


def _disagreement(n_contradicting: int, n: int = 60, baseline: tuple[int, int] = (120, 18)) -> LabelDisagreement:
    y = np.array([0] * n_contradicting + [1] * (n - n_contradicting))  # all alerted: normal labels contradict
    return label_disagreement([f"e{i}" for i in range(n)], y, np.full(n, 0.9), ["ann"] * n, threshold=0.5,
                              quiet_below=0.1, baseline=baseline, max_jump=0.1, z_alarm=3.0, min_confident=20)


def test_disagreement_alarm_needs_a_large_and_clear_jump_and_names_who() -> None:
    calm = _disagreement(10)        # 17 % vs 15 % before: honest noise
    jump = _disagreement(30)        # 50 % vs 15 %
    assert not calm.alarm and "ok:" in calm.reason
    assert jump.alarm and jump.reason.startswith("ALARM") and jump.z > 3
    assert jump.by_analyst == {"ann": [60, 30]} and len(jump.contradicting_ids) == 30
    first = _disagreement(30, baseline=(0, 0))  # no history yet: cannot compare, no alarm
    assert not first.alarm and "not compared" in first.reason
    quiet = label_disagreement(["a", "b"], [1, 0], [0.05, 0.05], ["x", "x"], threshold=0.5, quiet_below=0.1,
                               baseline=(0, 0), max_jump=0.1, z_alarm=3.0, min_confident=1)
    assert quiet.n_confident == 2 and quiet.contradicting_ids == ["a"]  # quiet but labelled anomaly


def test_gate_rejects_on_the_alarm_and_lets_trusted_labels_decide() -> None:
    held_good, held_champ = _ev(0.95), _ev(0.7)  # on (poisoned) held-back labels the candidate looks better
    alarm = promotion_gate(held_good, held_champ, alert_budget=0.02, min_labels=10, tolerance=0.01,
                           disagreement=_disagreement(30))
    assert not alarm.promote and "disagreement alarm" in alarm.reason
    assert alarm.as_dict()["label_disagreement"]["alarm"] is True

    worse_on_trusted = TrustedEvidence(candidate=_ev(0.40, n=60, n_anom=8), champion=_ev(0.55, n=60, n_anom=8))
    decision = promotion_gate(held_good, held_champ, alert_budget=0.02, min_labels=10, tolerance=0.01,
                              trusted=worse_on_trusted, disagreement=_disagreement(10))
    assert not decision.promote and decision.checks["trusted_auc_pr"] is False and "trusted" in decision.reason

    # enough trusted labels decide alone: a candidate worse on (possibly poisoned) held-back labels still passes
    better_on_trusted = TrustedEvidence(candidate=_ev(0.60, n=60, n_anom=8), champion=_ev(0.55, n=60, n_anom=8))
    decision = promotion_gate(_ev(0.5), _ev(0.9), alert_budget=0.02, min_labels=10, tolerance=0.01,
                              trusted=better_on_trusted)
    assert decision.promote and "trusted labels" in decision.reason

    # too few trusted anomalies: the held-back labels decide, as before
    thin = TrustedEvidence(candidate=_ev(0.9, n=60, n_anom=2), champion=_ev(0.1, n=60, n_anom=2))
    decision = promotion_gate(_ev(0.5), _ev(0.9), alert_budget=0.02, min_labels=10, tolerance=0.01, trusted=thin,
                              min_trusted_anomalies=5)
    assert not decision.promote and decision.checks["auc_pr"] is False
