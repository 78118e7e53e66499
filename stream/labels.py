"""LabelWorker: analysts' labels from the labels topic into the label store, joined with features.

A label is only useful with the features of the event it judges, and the scorers stored those
(``FeatureStore``) when they scored the event. The worker joins the two and writes the pair to
the ``LabelStore``; a label that cannot be joined (unknown event_id, or its features expired)
is dead-lettered with that reason, never dropped. Offsets are committed only after the label
store write and the dead letters' acks, so a crash re-delivers and re-applies (idempotent).

Labels are few (analysts' answers), so each message is validated on its own with pydantic's
JSON parser; the scorer's batch tricks are not needed here.

Faults do not end the process, as for the scorer: Redis or the broker away makes the batch fail
before its commit, the consumer is rewound to the batch's first offsets (so the labels come back,
none is skipped) and the loop retries after a capped backoff. A poll that returns at once with
nothing (no fetchable partition) is not repeated at once, and one that busy-loops while a join is
pending counts toward replacing the stranded consumer (``ConsumerLoop.note_empty_poll``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import ValidationError

from ..schemas.events import Label, RejectStage
from ..schemas.settings import KafkaSettings
from ..trainer.registry import ModelRegistry
from ..trainer.store import FeatureStore, LabelStore
from .backoff import Backoff
from .checkpoint import Checkpoint, CommitResult, batch_records
from .consumer_loop import ConsumerLoop, TRANSIENT_FAULTS, send_dead_letter

__all__ = ["LabelBatchOutcome", "LabelWorker", "decode_labels"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class _LabelReject:
    index: int
    stage: RejectStage
    error_class: str
    message: str


def decode_labels(values: list[bytes | None]) -> tuple[list[tuple[int, Label]], list[_LabelReject]]:
    """Valid labels with their message index, and rejects with the reason; never raises."""
    labels: list[tuple[int, Label]] = []
    rejects: list[_LabelReject] = []
    for i, value in enumerate(values):
        if not value:
            rejects.append(_LabelReject(i, "decode", "EmptyMessage", "decode: empty message value"))
            continue
        try:
            labels.append((i, Label.model_validate_json(value)))
        except ValidationError as exc:
            err = exc.errors()[0]
            stage = "decode" if err["type"] == "json_invalid" else "validate"
            loc = ".".join(str(p) for p in err["loc"])
            rejects.append(_LabelReject(i, stage, "ValidationError", f"{stage}: {loc}: {err['msg']}".replace(": :", ":")))
    return labels, rejects


@dataclass
class LabelBatchOutcome:
    n_records: int = 0
    n_new: int = 0
    n_replaced: int = 0
    n_unchanged: int = 0
    n_dead: int = 0
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    result: CommitResult | None = None


class LabelWorker(ConsumerLoop):
    """The one consumer of the labels topic (its own group); clients are passed in."""

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer, *, features: FeatureStore,
                 labels: LabelStore, registry: ModelRegistry, kafka: KafkaSettings, poll_ms: int = 500,
                 consumer_factory: Callable[[], KafkaConsumer] | None = None, join_stall_s: float = 60.0,
                 max_backoff_s: float = 30.0) -> None:
        self.consumer = consumer
        self.producer = producer
        self.features = features
        self.labels = labels
        self.registry = registry
        self.kafka = kafka
        self.poll_ms = poll_ms
        self.backoff = Backoff(initial_s=0.2, max_s=max_backoff_s)
        super().__init__(consumer_factory=consumer_factory, join_stall_s=join_stall_s)

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Loop until stopped (signal, ``request_stop`` or ``until()`` true); faults are waited out."""
        try:
            while not self._stopping and not (until is not None and until()):
                try:
                    started = time.monotonic()
                    outcome = self.process_one_batch()
                    if outcome.result in (CommitResult.UNACKNOWLEDGED, CommitResult.COMMIT_FAILED):
                        self._retry_later(f"batch not committed ({outcome.result.value})")
                    else:
                        if self.backoff.succeeded():
                            log.info("label consumer recovered")
                        if not outcome.n_records and time.monotonic() - started < self.poll_ms / 2000:
                            self._sleep(0.05)  # poll returned at once with nothing: do not spin a core
                except TRANSIENT_FAULTS as exc:
                    self._retry_later(repr(exc))
                self.restart_consumer_if_stalled()
        finally:
            self.close()

    def _retry_later(self, why: str) -> None:
        delay = self.backoff.failed()
        log.warning("label consumer: %s; retrying in %.1f s", why, delay)
        self._sleep(delay)

    def close(self) -> None:
        self.close_clients()

    def _expected_width(self) -> int | None:
        """The serving model's feature count: a stored row of another width cannot be trained on."""
        version = self.registry.current_version()
        return None if version is None else len(self.registry.manifest(version).feature_names)

    def process_one_batch(self) -> LabelBatchOutcome:
        wall, cpu = time.monotonic(), time.process_time()
        polled = self.consumer.poll(timeout_ms=self.poll_ms, max_records=1000)
        records = batch_records(polled)  # partition by partition, each in offset order
        outcome = LabelBatchOutcome(n_records=len(records))
        if not records:
            self.note_empty_poll(time.monotonic() - wall, time.process_time() - cpu)
            return outcome
        self._saw_records()
        checkpoint = self.new_checkpoint()
        checkpoint.extend(polled)
        try:
            return self._apply(records, checkpoint, outcome)
        except TRANSIENT_FAULTS:
            checkpoint.rewind()  # the consumer's position is past these labels: bring them back
            raise

    def _apply(self, records: list[Any], checkpoint: Checkpoint, outcome: LabelBatchOutcome) -> LabelBatchOutcome:
        parsed, rejects = decode_labels([r.value for r in records])

        latest: dict[str, tuple[int, Label]] = {}
        for index, label in parsed:  # within a batch the last label per event wins, as across batches
            latest[label.event_id] = (index, label)
        ids = list(latest)
        found = self.features.lookup(ids, self._expected_width())
        joined = [eid for eid in ids if eid in found]
        for eid in ids:
            if eid not in found:
                rejects.append(_LabelReject(latest[eid][0], "label-join", "UnknownEvent",
                                            f"label-join: event {eid!r} is unknown or its features expired "
                                            f"(feature store TTL {self.features.ttl_s} s)"))
        if joined:
            metas = [orjson.dumps(latest[e][1].model_dump(mode="json"), option=orjson.OPT_SORT_KEYS) for e in joined]
            before = self.labels.previous(joined)
            writes = self.labels.apply(joined, metas, np.stack([found[e] for e in joined]))
            for eid, write, old in zip(joined, writes, before):
                if write == "replaced":
                    log.info("label for event %s replaced: %s -> %s", eid, orjson.loads(old or b"{}").get("label"),
                             latest[eid][1].label)
            outcome.n_new = writes.count("new")
            outcome.n_replaced = writes.count("replaced")
            outcome.n_unchanged = writes.count("unchanged")

        for r in rejects:
            send_dead_letter(checkpoint, self.kafka.dlq_topic, records[r.index], stage=r.stage,
                             error_class=r.error_class, message=r.message)
        # The label store write is idempotent, so a batch whose commit does not happen (dead letters
        # not acknowledged: rewound; a rebalance: re-delivered to the new owner) is simply applied again.
        outcome.result = checkpoint.commit(rebalancing=self.membership.waiting_s() > 0)
        outcome.n_dead, outcome.offsets = len(rejects), checkpoint.offsets
        if outcome.n_new or outcome.n_replaced or rejects:
            log.info("labels: %d new, %d replaced, %d duplicates, %d dead-lettered", outcome.n_new,
                     outcome.n_replaced, outcome.n_unchanged, len(rejects))
        return outcome
