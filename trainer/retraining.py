"""One retraining run of the label loop: gather, fit, calibrate, gate, register, promote or reject.

The data of a run:

- **labelled anomalies** (analysts' ``anomaly`` labels, training part) are MNP's X_A;
- **the reservoir pool** (a uniform sample of recent scored traffic) is the unlabelled X_U. It
  is contaminated with anomalies nobody labelled; MNP's likelihood weighting down-weights them;
- **confirmed normals** (``normal`` labels, training part) join X_U with their likelihood weight
  pinned to 1 (``MNPDetector.fit(X_normal=...)``): the analyst vouched for them, so the weight that
  exists to discount suspected anomalies must not discount them. This extends MNP, whose
  formulation has no slot for confirmed normals (spec section 13).

Pool rows whose event has a label are removed from X_U (the label says where they belong), and
labels held back for the gate (a stable hash of the event_id) never reach any model's training.
Neither do **trusted** labels (source ``audit``, or pinned by an operator): they are the gate's
evidence that the label stream cannot poison; nor **quarantined** labels (those that raised the
gate's disagreement alarm), until an operator releases them (``evaluation`` explains both).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
import redis

from ..schemas.manifest import ThresholdCalibration
from ..schemas.settings import TrainerSettings
from .detectors.loading import load_detector
from .evaluation import (
    GateDecision,
    LabelDisagreement,
    TrustedEvidence,
    label_disagreement,
    model_evidence,
    promotion_gate,
    threshold_for_budget,
    threshold_for_precision,
)
from .registry import ModelRegistry
from .store import LabelSet, LabelStore, TrafficReservoir
from .refit import fit_candidate, recipe_for
from .training import TrainingData, finalize_manifest

__all__ = ["Decision", "RetrainOutcome", "RetrainStores", "Retrainer", "calibrate_threshold"]

log = logging.getLogger(__name__)

Decision = Literal["promoted", "rejected", "skipped"]

#: "confidently normal" for the disagreement alarm: scored below the champion's median on recent
#: traffic. A lower quantile would leave too few audit labels confident; a higher one would call
#: borderline events confident.
_QUIET_QUANTILE = 0.5


@dataclass(frozen=True)
class RetrainStores:
    """The Redis-side collaborators of a retrain (clients built by the caller)."""

    client: redis.Redis
    labels: LabelStore
    reservoir: TrafficReservoir
    registry: ModelRegistry


@dataclass(frozen=True)
class RetrainOutcome:
    trigger: str
    decision: Decision
    reason: str
    version: str | None = None
    parent_version: str | None = None
    fit_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)


def calibrate_threshold(traffic_scores: npt.NDArray[np.float32], *, settings: TrainerSettings,
                        y_labels: npt.NDArray[np.int64] | None = None,
                        label_scores: npt.NDArray[np.float32] | None = None) -> tuple[float, ThresholdCalibration]:
    """Threshold for the alert budget, or for a precision target when held-back labels allow.

    The precision target is measured on held-back labels, which analysts gave mostly to alerted
    events, so it is biased towards hard cases; it is therefore only used when at least
    ``gate_min_labels`` labels with both classes exist, and never allowed to alert more than the
    budget (the budget is the analysts' capacity).
    """
    budget_threshold = threshold_for_budget(traffic_scores, settings.alert_budget)
    n = len(traffic_scores)
    if settings.threshold_mode == "precision_target" and y_labels is not None and label_scores is not None:
        enough = len(y_labels) >= settings.gate_min_labels and 0 < int(y_labels.sum()) < len(y_labels)
        target = threshold_for_precision(y_labels, label_scores, settings.precision_target) if enough else None
        if target is not None:
            return max(target, budget_threshold), ThresholdCalibration(
                method="precision_target", target=settings.precision_target, n_samples=len(y_labels))
    return budget_threshold, ThresholdCalibration(method="alert_budget", target=settings.alert_budget, n_samples=n)


class Retrainer:
    """Runs retrains against the stores; the caller holds the leader lock."""

    def __init__(self, stores: RetrainStores, settings: TrainerSettings, *, mnp_params: dict[str, Any] | None = None) -> None:
        self.stores = stores
        self.settings = settings
        self.mnp_params = {"max_epochs": settings.n_epochs, "pretrain_max_epochs": settings.n_epochs,
                           "weighting": settings.weighting, "screen_pool": settings.screen_pool,
                           "n_members": settings.n_members, **(mnp_params or {})}
        self.state_key = f"{stores.labels.prefix}:trainer:last_run"

    # ------------------------------------------------------------------ state shared by trainers
    def last_run(self) -> dict[str, Any] | None:
        raw = self.stores.client.get(self.state_key)
        return orjson.loads(raw) if raw else None

    def _record(self, outcome: RetrainOutcome) -> RetrainOutcome:
        state = {"ts": time.time(), "trigger": outcome.trigger, "decision": outcome.decision,
                 "reason": outcome.reason, "version": outcome.version}
        self.stores.client.set(self.state_key, orjson.dumps(state))
        log.info("retrain (%s): %s %s: %s", outcome.trigger, outcome.decision, outcome.version or "", outcome.reason)
        return outcome

    # ------------------------------------------------------------------ a run
    def run(self, trigger: str, *, is_leader: Callable[[], bool] = lambda: True) -> RetrainOutcome:
        registry = self.stores.registry
        champion_version = registry.current_version()
        if champion_version is None:
            return self._record(RetrainOutcome(trigger, "skipped", "no current model: train and promote a first one "
                                                                    "(protoguard train --register --promote)"))
        weights, champion_manifest = registry.load(champion_version)
        champion = load_detector(weights, champion_manifest)
        recipe = recipe_for(champion_manifest.detector)  # the candidate is of the champion's kind
        n_features = len(champion_manifest.feature_names)

        labels = self.stores.labels.snapshot(n_features)
        train, held = labels.split(self.settings.holdout_fraction)
        pool_ids, X_pool = self.stores.reservoir.sample(n_features)
        labelled = set(labels.event_ids)
        keep = np.fromiter((eid not in labelled for eid in pool_ids), dtype=bool, count=len(pool_ids))
        X_unlabelled = X_pool[keep]
        data = TrainingData(X_unlabelled=X_unlabelled, X_anomalies=train.X[train.y == 1],
                            X_normals=train.X[train.y == 0], feature_names=champion_manifest.feature_names)
        summary = {**data.summary(), "n_held_back": len(held.event_ids), "label_seq": labels.seq, "trigger": trigger}
        if (recipe.needs_labelled_anomalies and len(data.X_anomalies) == 0) or len(X_unlabelled) < 10:
            self.stores.labels.mark_trained(labels.seq)
            return self._record(RetrainOutcome(trigger, "skipped", "need at least one labelled anomaly (training part) "
                                                                    "and 10 pool rows", summary=summary))
        started = time.monotonic()
        warm = champion if self.settings.warm_start else None
        candidate = fit_candidate(recipe.kind, data, champion=champion, mnp_params=self.mnp_params, warm_start=warm,
                                  random_state=self.settings.random_state)
        fit_s = time.monotonic() - started
        # Thresholds and alert rates are measured on the whole pool: removing the labelled rows (mostly
        # alerts, mostly attacks) would leave a sample cleaner than real traffic, and a threshold set
        # on it would alert more than the budget once live.
        outcome = self.consider(candidate, champion=champion, champion_version=champion_version, trigger=trigger,
                                X_traffic=X_pool, held_y=held.y, held_X=held.X,
                                summary={**summary, "fit_s": round(fit_s, 3), "warm_start": _was_warm_started(candidate)},
                                is_leader=is_leader, fit_s=fit_s, trusted=labels.trusted(),
                                new_labels=labels.new_untrusted())
        self.stores.labels.mark_trained(labels.seq)
        return outcome

    def consider(self, candidate: Any, *, champion: Any | None, champion_version: str | None,
                 trigger: str, X_traffic: npt.NDArray[np.float32], held_y: npt.NDArray[np.int64],
                 held_X: npt.NDArray[np.float32], summary: dict[str, Any],
                 is_leader: Callable[[], bool] = lambda: True, fit_s: float = 0.0,
                 trusted: LabelSet | None = None, new_labels: LabelSet | None = None) -> RetrainOutcome:
        """Calibrate, gate against the champion, register, then promote or mark rejected.

        ``trusted`` (audit + pinned labels, never trained on) and ``new_labels`` (for the
        disagreement alarm) are optional: without them the gate judges on held-back labels alone.
        """
        registry = self.stores.registry
        traffic_scores = candidate.score(X_traffic)
        held_scores = candidate.score(held_X) if len(held_X) else np.empty(0, np.float32)
        threshold, calibration = calibrate_threshold(traffic_scores, settings=self.settings, y_labels=held_y,
                                                     label_scores=held_scores)
        cand_ev = model_evidence(held_y, held_scores, traffic_scores, threshold)
        champ_ev = trusted_ev = disagreement = None
        if champion is not None and champion_version is not None:
            champ_threshold = registry.manifest(champion_version).threshold
            champ_threshold = float("inf") if champ_threshold is None else champ_threshold
            champ_traffic = champion.score(X_traffic)
            champ_ev = model_evidence(held_y, champion.score(held_X) if len(held_X) else np.empty(0, np.float32),
                                      champ_traffic, champ_threshold)
            if trusted is not None and len(trusted.y):
                trusted_ev = TrustedEvidence(
                    candidate=model_evidence(trusted.y, candidate.score(trusted.X), traffic_scores, threshold),
                    champion=model_evidence(trusted.y, champion.score(trusted.X), champ_traffic, champ_threshold))
            if new_labels is not None and len(new_labels.y):
                disagreement = self._disagreement(new_labels, champion, champ_threshold, champ_traffic)
        s = self.settings
        gate: GateDecision = promotion_gate(cand_ev, champ_ev, alert_budget=s.alert_budget, min_labels=s.gate_min_labels,
                                            tolerance=s.gate_tolerance, trusted=trusted_ev, disagreement=disagreement,
                                            min_trusted_anomalies=s.gate_min_trusted_anomalies)
        summary = {**summary, "n_trusted": len(trusted.y) if trusted is not None else 0,
                   "n_trusted_anomalies": int(trusted.y.sum()) if trusted is not None else 0}
        weights, manifest = candidate.save()
        manifest = finalize_manifest(manifest, threshold=threshold, calibration=calibration, summary=summary,
                                     metrics={"gate": gate.as_dict()}, parent_version=champion_version)
        version = registry.register(weights, manifest, note=f"{trigger}: {gate.reason}")
        if disagreement is not None:
            self._settle_disagreement(disagreement, version)
        if gate.promote and not is_leader():
            registry.mark(version, "rejected", note="lost the trainer lock before promotion")
            return self._record(RetrainOutcome(trigger, "rejected", "lost the trainer lock before promotion", version,
                                               champion_version, fit_s, summary, gate.as_dict()))
        if gate.promote:
            registry.promote(version, reason=f"{trigger}: {gate.reason}")
            return self._record(RetrainOutcome(trigger, "promoted", gate.reason, version, champion_version, fit_s,
                                               summary, gate.as_dict()))
        registry.mark(version, "rejected", note=gate.reason)
        return self._record(RetrainOutcome(trigger, "rejected", gate.reason, version, champion_version, fit_s,
                                           summary, gate.as_dict()))

    # ------------------------------------------------------------------ the poisoning alarm
    def _disagreement(self, new_labels: LabelSet, champion: Any, champ_threshold: float,
                      champ_traffic: npt.NDArray[np.float32]) -> LabelDisagreement:
        """New labels against the champion's confident calls (alerts, and the quietest half of traffic)."""
        s = self.settings
        quiet_below = float(np.quantile(champ_traffic, _QUIET_QUANTILE)) if len(champ_traffic) else float("-inf")
        return label_disagreement(new_labels.event_ids, new_labels.y, champion.score(new_labels.X), new_labels.analysts,
                                  threshold=champ_threshold, quiet_below=quiet_below,
                                  baseline=self.stores.labels.disagreement_history(),
                                  max_jump=s.gate_max_disagreement_jump, z_alarm=s.gate_disagreement_z,
                                  min_confident=s.gate_min_disagreement_labels)

    def _settle_disagreement(self, disagreement: LabelDisagreement, version: str) -> None:
        """An alarm quarantines the contradicting labels; a quiet run extends the history."""
        labels = self.stores.labels
        if disagreement.alarm:
            n = labels.quarantine(disagreement.contradicting_ids)
            log.warning("label stream disagreement alarm (candidate %s rejected): %s; %d labels quarantined; "
                        "per analyst [confident, contradicting]: %s", version, disagreement.reason, n,
                        disagreement.by_analyst)
        else:
            labels.add_disagreement(disagreement.n_confident, disagreement.n_contradicting)


def _was_warm_started(candidate: Any) -> bool:
    """What the fit did, not what the settings asked: class-aware kinds always fit fresh, and MNP
    starts fresh when the champion's scorer inputs differ from this fit's (``fit_mnp``)."""
    return bool(getattr(candidate, "training_summary_", {}).get("warm_start", False))
