"""GroupMembership's join clock: what decides that a consumer is stalled and must be replaced."""
from __future__ import annotations

import time

from kafka import TopicPartition

from protoguard.stream.consumer_loop import GroupMembership

TP = TopicPartition("events", 0)


def test_a_new_member_waits_until_its_first_join_completes() -> None:
    m = GroupMembership()
    assert m.waiting_s() >= 0.0 and m.waiting_since is not None
    m.on_partitions_assigned({TP})
    assert m.waiting_s() == 0.0 and m.n_rejoins == 0


def test_an_empty_assignment_is_a_completed_join() -> None:
    """More members than partitions: a member settled with nothing must not count as stalled."""
    m = GroupMembership()
    m.on_partitions_assigned(set())
    assert m.waiting_s() == 0.0


def test_revoke_starts_the_clock_and_keeps_the_earliest_start() -> None:
    m = GroupMembership()
    m.on_partitions_assigned({TP})
    m.on_partitions_revoked({TP})
    first = m.waiting_since
    assert first is not None
    time.sleep(0.01)
    m.on_partitions_revoked(set())  # a second attempt at the same join does not reset the clock
    m.on_partitions_lost({TP})
    assert m.waiting_since == first
    assert m.waiting_s(now=first + 7.0) == 7.0
    m.on_partitions_assigned({TP})
    assert m.waiting_s() == 0.0 and m.n_rejoins == 1 and m.n_lost == 1


def test_restart_wait_restarts_the_clock() -> None:
    m = GroupMembership()
    m.waiting_since = time.monotonic() - 100
    m.restart_wait()
    assert m.waiting_s() < 1.0
