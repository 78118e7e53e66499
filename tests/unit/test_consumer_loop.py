"""stream/consumer_loop.py's parts that need no broker: dead-letter ids and letters, the idle clock and the
stalled-join restart, with a stand-in consumer. (GroupMembership is in test_group_membership.py.)"""
from __future__ import annotations

import base64
import hashlib
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from kafka import TopicPartition

from protoguard.schemas.events import DeadLetter
from protoguard.stream.consumer_loop import ConsumerLoop, dead_letter_id, send_dead_letter


# ---------------------------------------------------------------- dead letters
def test_dead_letter_id_is_deterministic_and_names_only_where_the_message_sat() -> None:
    first = dead_letter_id("events", 3, 12345)
    assert first == dead_letter_id("events", 3, 12345)  # a re-delivery gives the same id
    assert len(first) == 32 and set(first) <= set("0123456789abcdef")
    # pinned: readers de-duplicate across releases, so the derivation must not drift
    assert first == "74f45c8208f2e96f8be95466589496b6"
    others = {dead_letter_id("events", 3, 12346), dead_letter_id("events", 4, 12345), dead_letter_id("events.b", 3, 12345)}
    assert first not in others and len(others) == 3


def test_dead_letter_id_fields_cannot_run_into_each_other() -> None:
    assert dead_letter_id("t", 1, 23) != dead_letter_id("t", 12, 3)
    assert dead_letter_id("t1", 2, 3) != dead_letter_id("t", 12, 3)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers})


def _record(value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(topic="events", partition=2, offset=99, key=b"host-1", value=value)


def test_a_dead_letter_carries_the_original_where_it_came_from_and_why() -> None:
    out = Recorder()
    send_dead_letter(out, "events.dlq", _record(b'{"event_id":'), stage="decode", error_class="JSONDecodeError",  # type: ignore[arg-type]
                     message="unexpected end of data")
    (sent,) = out.sent
    letter = DeadLetter.model_validate(orjson.loads(sent["value"]))
    assert sent["topic"] == "events.dlq" and sent["key"] == b"host-1"
    assert letter.original == b'{"event_id":' and not letter.truncated and letter.original_size == 12
    assert (letter.topic, letter.partition, letter.offset, letter.stage) == ("events", 2, 99, "decode")
    assert letter.dead_letter_id == dead_letter_id("events", 2, 99)
    assert sent["headers"] == [("stage", b"decode"), ("error_class", b"JSONDecodeError"),
                               ("dead_letter_id", letter.dead_letter_id.encode())]


def test_a_poison_pill_becomes_a_bounded_dead_letter_describing_the_whole_message() -> None:
    huge = bytes(range(256)) * 1000
    out = Recorder()
    send_dead_letter(out, "dlq", _record(huge), stage="validate", error_class="ValidationError",  # type: ignore[arg-type]
                     message="x" * 5000, max_original_bytes=1024)
    letter = DeadLetter.model_validate(orjson.loads(out.sent[0]["value"]))
    assert letter.truncated and letter.original == huge[:1024] and len(base64.b64decode(letter.original_b64)) == 1024
    assert letter.original_size == len(huge) and letter.original_sha256 == hashlib.sha256(huge).hexdigest()
    assert letter.error_message == "x" * 2000 + " ...(cut)"
    assert len(out.sent[0]["value"]) < 4000


def test_a_tombstone_dead_letters_as_empty_bytes() -> None:
    out = Recorder()
    send_dead_letter(out, "dlq", _record(None), stage="decode", error_class="EmptyValue", message="no value")  # type: ignore[arg-type]
    letter = DeadLetter.model_validate(orjson.loads(out.sent[0]["value"]))
    assert letter.original == b"" and letter.original_size == 0 and not letter.truncated


# ---------------------------------------------------------------- the loop, with a stand-in consumer
class FakeConsumer:
    def __init__(self, topics: tuple[str, ...] = ("events",)) -> None:
        self.topics, self.assigned, self.listener = set(topics), set[TopicPartition](), None
        self.closed_with_autocommit: bool | None = None

    def subscription(self) -> set[str]:
        return self.topics

    def unsubscribe(self) -> None:
        self.topics = set()

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.topics, self.listener = set(topics), listener

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def close(self, autocommit: bool = True) -> None:
        self.closed_with_autocommit = autocommit


class Loop(ConsumerLoop):
    def __init__(self, consumer: FakeConsumer, **kwargs: Any) -> None:
        self.consumer = consumer  # type: ignore[assignment]
        super().__init__(**kwargs)


def test_the_loop_resubscribes_the_same_topics_with_its_counting_listener() -> None:
    consumer = FakeConsumer(("labels", "events"))
    loop = Loop(consumer)
    assert consumer.topics == {"events", "labels"} and consumer.listener is loop.membership


def test_the_idle_clock_runs_only_while_partitions_are_held() -> None:
    consumer = FakeConsumer()
    loop = Loop(consumer)
    time.sleep(0.2)
    assert loop.idle_s() == 0.0  # still joining: never idle, and the clock restarts
    consumer.assigned = {TopicPartition("events", 0)}
    loop.membership.on_partitions_assigned(consumer.assigned)
    time.sleep(0.05)
    assert 0.05 <= loop.idle_s() < 0.2
    # Revoked for a rebalance: kafka-python keeps the old assignment until the next join completes,
    # and a member stranded there must not count as idle (an idle-exit run would stop unread).
    loop.membership.on_partitions_revoked(consumer.assigned)
    assert loop.idle_s() == 0.0 and not loop.holds_partitions()
    loop.membership.on_partitions_assigned(consumer.assigned)
    time.sleep(0.05)
    assert 0.05 <= loop.idle_s() < 0.2 and loop.holds_partitions()


def test_only_a_join_stalled_past_the_limit_replaces_the_consumer() -> None:
    old, new = FakeConsumer(), FakeConsumer()
    loop = Loop(old, consumer_factory=lambda: new, join_stall_s=30.0)
    assert not loop.restart_consumer_if_stalled()  # joining for a moment only
    loop.membership.on_partitions_assigned(set())  # settled with no partition: never stalled
    assert not loop.restart_consumer_if_stalled()
    loop.membership.waiting_since = time.monotonic() - 31.0
    assert loop.restart_consumer_if_stalled()
    assert loop.consumer is new and old.closed_with_autocommit is False
    assert new.listener is loop.membership and new.topics == {"events"}
    assert loop.n_consumer_restarts == 1 and loop.membership.waiting_s() < 5.0  # the new member's clock starts now


def test_without_a_factory_a_stalled_consumer_is_kept() -> None:
    loop = Loop(FakeConsumer(), join_stall_s=1.0)
    loop.membership.waiting_since = time.monotonic() - 100.0
    assert not loop.restart_consumer_if_stalled() and loop.n_consumer_restarts == 0


@pytest.mark.parametrize("signal_args", [(), (15, None)])
def test_a_stop_request_sets_the_flag_the_loop_checks(signal_args: tuple[Any, ...]) -> None:
    loop = Loop(FakeConsumer())
    assert loop._stopping is False
    loop.request_stop(*signal_args)
    assert loop._stopping is True
