"""What every protoguard consumer loop shares: graceful stop, the idle clock, group membership, dead letters.

The scorer and the label consumer differ in what they do with a batch, not in how they stop,
decide they are idle, notice that the group moved their partitions, or dead-letter a message.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import signal
import threading
import time
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kafka_errors
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from ..schemas.events import DeadLetter, RejectStage
from .checkpoint import ACK_TIMEOUT_S, Checkpoint

__all__ = ["ConsumerLoop", "GroupMembership", "TRANSIENT_FAULTS", "dead_letter_id", "send_dead_letter"]

log = logging.getLogger(__name__)

#: Faults of a consumer loop itself (the broker or Redis away), not of one message's input: they
#: are waited out with a backoff, never fatal.
TRANSIENT_FAULTS = (kafka_errors.KafkaError, redis.RedisError, OSError)


class GroupMembership(ConsumerRebalanceListener):
    """Logs and counts partition moves: the first thing an operator asks when a consumer looks stuck.

    A *rejoin* is any assignment after the first one: a rebalance, or this member coming back after
    the coordinator evicted it (a long GC or GPU stall past the session timeout). Callbacks run on
    kafka-python's I/O thread, so they only count and log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.n_assignments = 0
        self.n_lost = 0
        self.last_change = time.monotonic()
        #: since when this member has been between groups: subscribed (or revoked, or lost) and not
        #: yet handed an assignment (the eager protocol calls ``on_partitions_assigned`` after every
        #: completed join, with an empty set too); None while it is a settled member
        self.waiting_since: float | None = time.monotonic()

    def waiting_s(self, now: float | None = None) -> float:
        """Seconds this member has been waiting for a join to complete (0 while settled)."""
        with self._lock:
            since = self.waiting_since
        return 0.0 if since is None else (time.monotonic() if now is None else now) - since

    def restart_wait(self) -> None:
        with self._lock:
            self.waiting_since = time.monotonic()

    @property
    def n_rejoins(self) -> int:
        return max(0, self.n_assignments - 1)

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self._lock:  # a (re)join has begun: called before every join, with an empty set too
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
        if revoked:
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        with self._lock:
            self.n_lost += 1
            self.last_change = time.monotonic()
            if self.waiting_since is None:
                self.waiting_since = self.last_change
        log.warning("partitions lost (this member was removed from the group): %s",
                    sorted((tp.topic, tp.partition) for tp in lost))

    def on_partitions_assigned(self, assigned: Any) -> None:
        with self._lock:
            self.n_assignments += 1
            self.last_change = time.monotonic()
            self.waiting_since = None
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


#: a pending join whose empty polls busy-loop this long is stranded (see ``note_empty_poll``)
_SPIN_LIMIT_S = 3.0


class ConsumerLoop:
    """Stop flag, signal handlers, idle clock, membership and shutdown for a class owning
    ``consumer`` and ``producer``."""

    consumer: KafkaConsumer
    producer: KafkaProducer

    def __init__(self, *, consumer_factory: Callable[[], KafkaConsumer] | None = None,
                 join_stall_s: float = 60.0) -> None:
        self._stopping = False
        self._last_records_at = time.monotonic()
        self.membership = GroupMembership()
        self.consumer_factory = consumer_factory
        self.join_stall_s = join_stall_s
        self.n_consumer_restarts = 0
        self._spinning_since: float | None = None
        self._listen_to_membership()

    def _listen_to_membership(self) -> None:
        topics = sorted(self.consumer.subscription() or ())
        if topics:  # subscribe again with the counting listener (same topics; before the first poll)
            self.consumer.unsubscribe()
            self.consumer.subscribe(topics, listener=self.membership)

    def note_empty_poll(self, wall_s: float, cpu_s: float) -> None:
        """Feed the stall check with an empty poll's wall time and the process CPU it used.

        A member waiting for a join normally blocks in ``poll`` at almost no CPU. kafka-python's
        stranded member instead busy-loops inside ``poll`` for its whole timeout (a core at 100 %).
        Polls like that for ``_SPIN_LIMIT_S`` while a join is pending are a stall at once, without
        waiting for ``join_stall_s``.
        """
        if self.membership.waiting_s() > 0 and wall_s >= 0.1 and cpu_s >= 0.5 * wall_s:
            if self._spinning_since is None:
                self._spinning_since = time.monotonic()
        else:
            self._spinning_since = None

    def _stalled(self) -> bool:
        if self.membership.waiting_s() >= self.join_stall_s:
            return True
        return self._spinning_since is not None and time.monotonic() - self._spinning_since >= _SPIN_LIMIT_S

    def restart_consumer_if_stalled(self) -> bool:
        """Replace a consumer whose group join has not completed for ``join_stall_s``.

        Why: kafka-python 3.0 can leave a member that was refused a commit mid-rebalance
        (``RebalanceInProgressError``, then ``UnknownMemberIdError`` on leave) without an assignment
        for good, its ``poll`` returning at once with nothing: seen in CI, and the lag then grows
        silently while the process looks alive. A fresh consumer joins as a new member. A member
        that is merely idle, or settled with no partition (more members than partitions), has
        completed its join and is never restarted. Returns True when the consumer was replaced.
        """
        if self.consumer_factory is None or not self._stalled():
            return False
        log.warning("no completed group join for %.0f s (assignment %s): replacing the consumer",
                    self.membership.waiting_s(), sorted(f"{tp.topic}[{tp.partition}]" for tp in self.consumer.assignment()))
        self.membership.restart_wait()  # success or not, the next attempt is a whole stall limit away
        self._spinning_since = None
        try:  # the new one first: with the broker away the factory fails, and the old consumer stays
            replacement = self.consumer_factory()
        except Exception as exc:  # noqa: BLE001 - any failure to build leaves the loop running as it was
            log.warning("cannot build a replacement consumer yet (%r); keeping the stalled one", exc)
            return False
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - a half-broken consumer must not block its replacement
            log.warning("stalled consumer did not close cleanly: %r", exc)
        self.consumer = replacement
        self._listen_to_membership()
        self.n_consumer_restarts += 1
        return True

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` in short steps, ending early on a stop request; ``_on_wait_tick`` runs
        at each step (the scorer beats its liveness there)."""
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            self._on_wait_tick()
            time.sleep(max(0.0, min(0.2, end - time.monotonic())))

    def _on_wait_tick(self) -> None:
        """Called at each step of ``_sleep``; nothing by default."""

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: finish the in-flight batch, flush, commit, leave the group."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close_clients(self, timeout_s: float = ACK_TIMEOUT_S) -> None:
        """Flush what is in flight, then leave the group (no auto-commit) so partitions move at once."""
        try:
            self.producer.flush(timeout=timeout_s)
            self.producer.close(timeout=timeout_s)
        except Exception as exc:  # a dead broker must not keep the process from exiting
            log.warning("producer did not close cleanly: %r", exc)
        finally:
            self.consumer.close(autocommit=False)

    def new_checkpoint(self) -> Checkpoint:
        return Checkpoint(self.consumer, self.producer)

    def _saw_records(self) -> None:
        self._last_records_at = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last batch that held records, counted only while partitions are held
        (``holds_partitions``).

        The clock stays at zero until the group has handed this member partitions (joining, or an
        assignment left empty because the topic's metadata was not visible yet, can take longer than
        the idle limit on a loaded machine); otherwise a batch-style run could exit before it began.
        """
        now = time.monotonic()
        if not self.holds_partitions():
            self._last_records_at = now
            return 0.0
        return now - self._last_records_at

    def holds_partitions(self) -> bool:
        """Partitions assigned by a completed join. kafka-python keeps a revoked assignment in
        ``assignment()`` until the next join completes, so a member stranded mid-rebalance would
        otherwise look like one that holds partitions and has nothing to read (and an idle-exit run
        would stop early, leaving its partitions unread)."""
        return self.membership.waiting_s() == 0.0 and bool(self.consumer.assignment())


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic id of a dead letter: a re-delivered message gives the same id, so readers de-duplicate."""
    return hashlib.sha256(f"{topic}\x00{partition}\x00{offset}".encode()).hexdigest()[:32]


#: An error message is cut to this many characters (a validation error can quote its input).
_MAX_ERROR_CHARS = 2000


def send_dead_letter(checkpoint: Checkpoint, topic: str, record: Any, *, stage: RejectStage, error_class: str,
                     message: str, max_original_bytes: int = 65_536) -> None:
    """Queue a ``DeadLetter`` carrying the original bytes (up to ``max_original_bytes``) and where
    they came from on the batch's checkpoint. Its size is bounded whatever the input's size, so a
    poison pill cannot make the dead letter itself unsendable (and the batch stuck)."""
    original = record.value or b""
    letter_id = dead_letter_id(record.topic, record.partition, record.offset)
    message = message if len(message) <= _MAX_ERROR_CHARS else message[:_MAX_ERROR_CHARS] + " ...(cut)"
    letter = DeadLetter(
        dead_letter_id=letter_id, original_b64=base64.b64encode(original[:max_original_bytes]).decode(),
        original_size=len(original), original_sha256=hashlib.sha256(original).hexdigest(),
        truncated=len(original) > max_original_bytes, topic=record.topic, partition=record.partition,
        offset=record.offset, stage=stage, error_class=error_class, error_message=message, ts=datetime.now(UTC),
    )
    log.warning("dead letter %s[%d]@%d (%d B): %s", record.topic, record.partition, record.offset, len(original),
                message[:300])
    checkpoint.send(topic, key=record.key, value=orjson.dumps(letter.model_dump(mode="json")),
                    headers=[("stage", stage.encode()), ("error_class", error_class.encode()),
                             ("dead_letter_id", letter_id.encode())])
