"""What every protoguard consumer loop shares: graceful stop, the idle clock, dead letters, commits.

The scorer and the label consumer differ in what they do with a batch, not in how they stop,
decide they are idle, dead-letter a message or commit what they finished.
"""
from __future__ import annotations

import base64
import logging
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ..schemas.events import DeadLetter, RejectStage

__all__ = ["ACK_TIMEOUT_S", "ConsumerLoop", "batch_offsets", "commit_offsets", "send_dead_letter", "unacknowledged"]

#: How long a batch (and a shutdown) waits for the broker to acknowledge its sends.
ACK_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


class ConsumerLoop:
    """Stop flag, signal handlers, idle clock and shutdown for a class owning ``consumer`` and ``producer``."""

    consumer: KafkaConsumer
    producer: KafkaProducer

    def __init__(self) -> None:
        self._stopping = False
        self._last_records_at = time.monotonic()

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: finish the in-flight batch, flush, commit, leave the group."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close_clients(self, timeout_s: float) -> None:
        """Flush what is in flight, then leave the group (no auto-commit) so partitions move at once."""
        try:
            self.producer.flush(timeout=timeout_s)
            self.producer.close(timeout=timeout_s)
        finally:
            self.consumer.close(autocommit=False)

    def _saw_records(self) -> None:
        self._last_records_at = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last batch that held records, counted only while partitions are held.

        The clock stays at zero until the group has handed this member partitions (joining, or an
        assignment left empty because the topic's metadata was not visible yet, can take longer than
        the idle limit on a loaded machine); otherwise a batch-style run could exit before it began.
        """
        now = time.monotonic()
        if not self.consumer.assignment():
            self._last_records_at = now
            return 0.0
        return now - self._last_records_at


def send_dead_letter(producer: KafkaProducer, topic: str, record: Any, *, stage: RejectStage, error_class: str,
                     message: str) -> Any:
    """Publish a ``DeadLetter`` carrying the original bytes and where they came from; returns the future."""
    letter = DeadLetter(
        original_b64=base64.b64encode(record.value or b"").decode(), topic=record.topic, partition=record.partition,
        offset=record.offset, stage=stage, error_class=error_class, error_message=message, ts=datetime.now(UTC),
    )
    log.warning("dead letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, message)
    return producer.send(topic, key=record.key, value=orjson.dumps(letter.model_dump(mode="json")),
                         headers=[("stage", stage.encode()), ("error_class", error_class.encode())])


def batch_offsets(records: Sequence[Any]) -> dict[TopicPartition, int]:
    """The next offset to consume per partition after ``records`` (what a commit should store)."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
    return offsets


def unacknowledged(producer: KafkaProducer, futures: Sequence[Any], timeout_s: float = ACK_TIMEOUT_S) -> list[Any]:
    """Flush, then return the sends the broker did not acknowledge. A batch commits its offsets only
    when this is empty (at least once: otherwise its records are delivered again)."""
    producer.flush(timeout=timeout_s)
    return [f for f in futures if not f.succeeded()]


def commit_offsets(consumer: KafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
