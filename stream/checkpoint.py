"""One batch's way to a commit: send its outputs, wait for the broker's acks, commit only what was acknowledged.

Every protoguard consumer (the scorer and the label consumer) turns a polled batch into sends
(alerts, dead letters) and then moves its committed offsets past that batch. The rule that
makes delivery at-least-once lives here, once:

1. offsets come from ``poll()``'s own per-partition grouping (the last record of each partition),
   so nothing loops over records to find them;
2. ``commit()`` flushes the producer and commits **only** when every send of the batch was
   acknowledged; otherwise it rewinds the consumer to the batch's first offsets so the same
   records come back (a later batch must never commit past an unacknowledged one);
3. a commit refused because the group moved on (eviction, rebalance) is not an error of the
   process: the batch's partitions now belong to another member, which re-delivers the events
   from the last commit, and the repeated alerts carry the same deterministic ``alert_id``.
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.structs import OffsetAndMetadata

from ..schemas.errors import ProtoguardError

__all__ = ["ACK_TIMEOUT_S", "Checkpoint", "CommitResult", "DeliveryError", "Polled", "REBALANCE_ERRORS",
           "batch_records", "poll_offsets"]

#: How long a batch (and a shutdown) waits for the broker to acknowledge its sends; well under
#: ``max_poll_interval_ms``, so a slow broker cannot push the member out of its group.
ACK_TIMEOUT_S = 30.0

#: The group moved on without us: the batch's partitions may belong to another member now.
REBALANCE_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.CommitFailedError, kafka_errors.RebalanceInProgressError, kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
)

log = logging.getLogger(__name__)

Polled = Mapping[TopicPartition, Sequence[Any]]


class DeliveryError(ProtoguardError):
    """Sends of a batch (alerts or dead letters) were not acknowledged; its offsets were not committed."""


class CommitResult(enum.Enum):
    COMMITTED = "committed"
    #: the broker did not acknowledge every send; the consumer was rewound to the batch's start
    UNACKNOWLEDGED = "unacknowledged"
    #: the group rebalanced (or evicted this member); the batch is left to the partitions' new owner
    REBALANCED = "rebalanced"
    #: the coordinator could not be reached; the consumer was rewound to the batch's start
    COMMIT_FAILED = "commit_failed"


def poll_offsets(polled: Polled) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(first offset, next offset to commit) per partition, from ``poll()``'s grouping.

    ``poll()`` returns each partition's records in offset order, so the first and last record of
    each list are all that is needed.
    """
    first = {tp: records[0].offset for tp, records in polled.items() if records}
    after = {tp: records[-1].offset + 1 for tp, records in polled.items() if records}
    return first, after


def batch_records(polled: Polled) -> list[Any]:
    """The records of a poll result as one list (partition by partition, in offset order)."""
    if len(polled) == 1:
        return list(next(iter(polled.values())))
    return [r for records in polled.values() for r in records]


class Checkpoint:
    """The sends and offsets of one micro-batch, and the commit that closes it.

    ``extend(polled)`` may be called several times (a batch gathered over several polls); the
    first offset of each partition is kept for rewinding and the last for committing.
    """

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self.consumer = consumer
        self.producer = producer
        self.ack_timeout_s = ack_timeout_s
        self.start: dict[TopicPartition, int] = {}
        self.offsets: dict[TopicPartition, int] = {}
        self.futures: list[Any] = []
        self.error: BaseException | None = None

    def extend(self, polled: Polled) -> None:
        first, after = poll_offsets(polled)
        for tp, offset in first.items():
            self.start.setdefault(tp, offset)
        self.offsets.update(after)

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one output of the batch. A send that fails at once (buffer full, broker unknown)
        is remembered and fails the batch's commit instead of escaping from the hot path."""
        try:
            self.futures.append(self.producer.send(topic, key=key, value=value, headers=headers))
        except kafka_errors.KafkaError as exc:
            self.error = self.error or exc

    def unacknowledged(self) -> list[Any]:
        """Flush, then the sends the broker did not acknowledge (all of them when the flush timed out)."""
        try:
            self.producer.flush(timeout=self.ack_timeout_s)
        except kafka_errors.KafkaError as exc:
            self.error = self.error or exc
        return [f for f in self.futures if not (f.is_done and f.succeeded())]

    def commit(self, *, rebalancing: bool = False) -> CommitResult:
        """Commit the batch's offsets if every send was acknowledged; otherwise rewind to its start.

        ``rebalancing``: the group took this member's partitions back while the batch was polled and
        no new assignment has come. The sends are still flushed (the outputs are delivered), but no
        commit is attempted: kafka-python refuses it anyway, and a commit issued in the middle of its
        join has left members out of the group for good (``stream.join_stall_s``). The partitions'
        next owner resumes from the last commit; repeated alerts carry the same ``alert_id``.
        """
        failed = self.unacknowledged()
        if failed or self.error is not None:
            cause = self.error or (failed[0].exception if failed else None)
            log.warning("%d of %d sends of the batch were not acknowledged (%r); offsets not committed, "
                        "rewinding to the batch's start", len(failed), len(self.futures), cause)
            self.rewind()
            return CommitResult.UNACKNOWLEDGED
        if not self.offsets:
            return CommitResult.COMMITTED
        if rebalancing:
            log.info("the group is rebalancing: batch delivered, offsets left to the partitions' next owner")
            return CommitResult.REBALANCED
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in self.offsets.items()})
        except REBALANCE_ERRORS as exc:
            log.warning("commit refused, the group rebalanced (%s): the batch is left to the partitions' new owner",
                        type(exc).__name__)
            return CommitResult.REBALANCED
        except kafka_errors.KafkaError as exc:
            log.warning("commit failed (%r); rewinding to the batch's start", exc)
            self.rewind()
            return CommitResult.COMMIT_FAILED
        return CommitResult.COMMITTED

    def rewind(self) -> None:
        """Seek every partition this member still holds back to the batch's first offset."""
        held = self.consumer.assignment()
        for tp, offset in self.start.items():
            if tp in held:
                try:
                    self.consumer.seek(tp, offset)
                except (kafka_errors.KafkaError, AssertionError, ValueError) as exc:  # lost it meanwhile
                    log.info("cannot rewind %s to %d: %r", tp, offset, exc)
