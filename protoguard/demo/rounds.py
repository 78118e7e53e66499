"""The demo's label loop, in one process: scorer, simulated analyst, label consumer, trainer.

Every part is the real component on the real stack (the ScoringWorker, the LabelWorker and the
TrainerService with its Redis lock), driven round by round instead of as separate processes so
the demo is deterministic and fits in a few minutes on 2 cores. The simulated analyst answers a
fixed budget of the round's alerts, highest score first, with the true label, wrong with a
configured probability. A share of the budget (``audit_share``) goes to a uniform random sample
of all the round's events, drawn before looking at alerts or scores, as review teams do to
estimate what the detector misses. Each label says how its event was chosen (``source``:
``audit`` for the random sample, ``alert`` for the rest): the promotion gate measures candidates
on audit labels because a random sample is unbiased and its selection cannot be steered by
whoever labels the alerts. Without audits every label would be an alert, nearly all attacks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import orjson
from kafka import KafkaConsumer, KafkaProducer

from ..schemas.events import LabelSource
from ..stream.labels import LabelWorker
from ..stream.replay import encode_events, malformed_messages
from ..stream.worker import ScoringWorker
from ..trainer.retraining import RetrainOutcome
from ..trainer.scheduler import TrainerService
from .report import RoundRecord

__all__ = ["DemoRounds", "RoundInput", "SimulatedAnalyst"]


@dataclass(frozen=True)
class RoundInput:
    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    n_malformed: int = 0


class SimulatedAnalyst:
    """Answers a budget of events per round with the truth (wrong with ``error_rate``)."""

    def __init__(self, *, budget: int, error_rate: float, audit_share: float, rng: np.random.Generator) -> None:
        self.budget = budget
        self.error_rate = error_rate
        self.audit_share = audit_share
        self.rng = rng

    def choose(self, alerts: list[dict], round_ids: list[str]) -> list[tuple[str, LabelSource]]:
        """A uniform audit sample of the round's events, then the top-scored alerts not in it."""
        n_audit = min(len(round_ids), int(round(self.budget * self.audit_share)))
        audit = [round_ids[i] for i in self.rng.choice(len(round_ids), size=n_audit, replace=False)] if n_audit else []
        audited = set(audit)
        ranked = [a["event_id"] for a in sorted(alerts, key=lambda a: -a["score"]) if a["event_id"] not in audited]
        chosen: list[tuple[str, LabelSource]] = [(e, "audit") for e in audit]
        return chosen + [(e, "alert") for e in ranked[: self.budget - n_audit]]

    def answer(self, chosen: list[tuple[str, LabelSource]], truth: dict[str, int]) -> tuple[list[bytes], int]:
        wrong = self.rng.random(len(chosen)) < self.error_rate
        now = datetime.now(UTC).isoformat()
        messages = []
        for (event_id, source), flip in zip(chosen, wrong):
            is_anomaly = bool(truth[event_id]) != bool(flip)
            messages.append(orjson.dumps({"event_id": event_id, "label": "anomaly" if is_anomaly else "normal",
                                          "analyst": "simulated", "ts": now, "source": source}))
        return messages, int(wrong.sum())


class DemoRounds:
    """Streams rounds through the scorer, lets the analyst answer, consumes labels, retrains."""

    def __init__(self, *, scorer: ScoringWorker, labeller: LabelWorker, trainer: TrainerService,
                 producer: KafkaProducer, alert_reader: KafkaConsumer, analyst: SimulatedAnalyst,
                 events_topic: str, labels_topic: str, feature_names: list[str], id_prefix: str) -> None:
        self.scorer = scorer
        self.labeller = labeller
        self.trainer = trainer
        self.producer = producer
        self.alert_reader = alert_reader
        self.analyst = analyst
        self.events_topic = events_topic
        self.labels_topic = labels_topic
        self.feature_names = feature_names
        self.id_prefix = id_prefix
        self.truth: dict[str, int] = {}
        self.n_streamed = 0
        self.n_scored = 0
        self.n_dead = 0
        self.n_malformed = 0
        self.timings: list[dict[str, float]] = []  # seconds per phase and round, for the summary

    def _produce(self, rnd: RoundInput) -> list[str]:
        start = self.n_streamed
        ids = []
        for (key, value, event_id), label in zip(encode_events(rnd.X, self.feature_names, id_prefix=self.id_prefix,
                                                               start=start), rnd.y):
            self.producer.send(self.events_topic, key=key, value=value)
            self.truth[event_id] = int(label)
            ids.append(event_id)
        for value in malformed_messages(rnd.n_malformed, self.feature_names, seed=start):
            self.producer.send(self.events_topic, value=value)
        self.producer.flush()
        self.n_streamed += len(rnd.X)
        self.n_malformed += rnd.n_malformed
        return ids

    def _score(self, n_records: int, timeout_s: float) -> tuple[int, str]:
        done = n_alerts = 0
        deadline = time.monotonic() + timeout_s
        version = ""
        while done < n_records and time.monotonic() < deadline:
            outcome = self.scorer.step()
            if outcome is None:  # no model to serve yet (cannot happen after the demo's first promotion)
                time.sleep(0.2)
                continue
            done += outcome.n_records
            n_alerts += outcome.n_alerts
            self.n_scored += outcome.n_scored
            self.n_dead += outcome.n_dead
            version = outcome.model_version or version
        if done < n_records:
            raise TimeoutError(f"the scorer handled {done} of {n_records} records in {timeout_s:.0f} s")
        self.scorer.flush_state()  # the analyst's labels are joined with these events' stored features
        return n_alerts, version

    def _read_alerts(self, n_expected: int, timeout_s: float = 60) -> list[dict]:
        alerts: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(alerts) < n_expected and time.monotonic() < deadline:
            for records in self.alert_reader.poll(timeout_ms=500).values():
                alerts.extend(orjson.loads(r.value) for r in records)
        return alerts

    def _consume_labels(self, n_expected: int, timeout_s: float = 60) -> None:
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < n_expected and time.monotonic() < deadline:
            seen += self.labeller.process_one_batch().n_records

    def run_round(self, number: int, rnd: RoundInput, *, timeout_s: float = 300) -> tuple[RoundRecord, RetrainOutcome | None]:
        t0 = time.monotonic()
        ids = self._produce(rnd)
        t1 = time.monotonic()
        n_alerts, version = self._score(len(ids) + rnd.n_malformed, timeout_s)
        t2 = time.monotonic()
        alerts = self._read_alerts(n_alerts)
        messages, n_wrong = self.analyst.answer(self.analyst.choose(alerts, ids), self.truth)
        for message in messages:
            self.producer.send(self.labels_topic, value=message)
        self.producer.flush()
        self._consume_labels(len(messages))
        t3 = time.monotonic()
        outcome = self.trainer.trigger("labels")
        self.timings.append({"produce_s": round(t1 - t0, 2), "score_s": round(t2 - t1, 2),
                             "label_s": round(t3 - t2, 2), "retrain_s": round(time.monotonic() - t3, 2)})
        if outcome is not None and outcome.decision == "promoted":
            self.scorer.watcher.refresh(force=True)  # the next round is scored by the new champion
        record = RoundRecord(round=number, model_version=version, n_events=len(rnd.X), n_alerts=len(alerts),
                             n_true_alerts=sum(self.truth[a["event_id"]] for a in alerts), n_labels=len(messages),
                             n_wrong_labels=n_wrong)
        return record, outcome
