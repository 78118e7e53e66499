"""The spine against the real stack: Kafka 4.x delivery in a consumer group, Redis blobs."""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter

import orjson
import pytest
import redis

from protoguard.deploy.stack import StackInfo
from protoguard.stream.clients import build_consumer, build_producer
from protoguard.stream.decode import decode_batch

pytestmark = pytest.mark.integration


def test_broker_is_kafka_4(stack: StackInfo) -> None:
    assert stack.kafka_version.split(".")[0] == "4", stack.kafka_version


def test_10k_events_arrive_exactly_once_with_manual_commits(stack: StackInfo, make_topic, unique) -> None:
    topic = make_topic("events", partitions=3)
    n_events = 10_000
    names = ["a", "b"]
    producer = build_producer(stack.bootstrap_servers)
    futures = [
        producer.send(topic, key=f"h{i % 17}".encode(),
                      value=orjson.dumps({"event_id": f"e{i}", "ts": 1_700_000_000 + i, "entity": f"h{i % 17}",
                                          "features": {"a": i, "b": -i}}))
        for i in range(n_events)
    ]
    producer.flush()
    assert all(f.succeeded() for f in futures)
    producer.close()

    group = unique("group")
    seen: Counter[str] = Counter()
    consumer = build_consumer(stack.bootstrap_servers, group, topic)
    deadline = time.monotonic() + 60
    try:
        while sum(seen.values()) < n_events and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=500, max_records=2000)
            for records in polled.values():
                batch = decode_batch([r.value for r in records], names)
                assert not batch.rejects
                seen.update(batch.event_ids)
            if polled:
                consumer.commit()
    finally:
        consumer.close()
    assert len(seen) == n_events
    assert max(seen.values()) == 1

    # A new member of the same group starts after the committed offsets: nothing is delivered twice.
    again = build_consumer(stack.bootstrap_servers, group, topic)
    try:
        extra = sum(len(rs) for _ in range(3) for rs in again.poll(timeout_ms=1000).values())
    finally:
        again.close()
    assert extra == 0


def test_redis_binary_blob_round_trip(redis_client: redis.Redis, unique) -> None:
    blob = os.urandom(1 << 20) + b"\x00\xff"
    key = unique("pg-test:blob")
    redis_client.set(key, blob, nx=True)
    back = redis_client.get(key)
    assert back == blob
    assert hashlib.sha256(back).digest() == hashlib.sha256(blob).digest()
    assert redis_client.set(key, b"other", nx=True) is None  # immutable: NX refuses to overwrite
