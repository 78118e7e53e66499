"""stream/checkpoint.py: offsets from poll's grouping (the commit rules run against the real broker in
tests/integration/test_liveness.py)."""
from __future__ import annotations

from dataclasses import dataclass

from kafka import TopicPartition

from protoguard.stream.checkpoint import batch_records, poll_offsets


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int


def _polled(spec: dict[int, range]) -> dict[TopicPartition, list[Rec]]:
    return {TopicPartition("t", p): [Rec("t", p, o) for o in offsets] for p, offsets in spec.items()}


def test_offsets_come_from_each_partitions_first_and_last_record() -> None:
    first, after = poll_offsets(_polled({0: range(5, 9), 2: range(100, 101)}))
    assert first == {TopicPartition("t", 0): 5, TopicPartition("t", 2): 100}
    assert after == {TopicPartition("t", 0): 9, TopicPartition("t", 2): 101}
    assert [r.offset for r in batch_records(_polled({0: range(2), 1: range(3)}))] == [0, 1, 0, 1, 2]
