"""Builders for the Kafka and Redis clients, configured the way protoguard's delivery guarantees need.

Kept in one place so the CLI, the demo and the integration tests make identical clients:
manual commits, an explicit offset reset, an idempotent ``acks=all`` producer.
"""
from __future__ import annotations

import logging
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import TopicAlreadyExistsError

__all__ = ["build_admin", "build_consumer", "build_producer", "build_redis", "ensure_topics"]


log = logging.getLogger("protoguard.kafka")


class _LoggingRebalanceListener(ConsumerRebalanceListener):
    """Logs partition moves: the first thing an operator asks when a consumer looks stuck."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


def build_redis(url: str) -> redis.Redis:
    """Binary-safe client (``decode_responses=False``): model blobs and feature rows are bytes."""
    return redis.Redis.from_url(url, decode_responses=False, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


def build_admin(bootstrap_servers: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=15_000)


def ensure_topics(bootstrap_servers: str, topics: dict[str, int]) -> None:
    """Create the topics that do not exist yet (name -> partitions), waiting until they have leaders."""
    admin = build_admin(bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        wanted = {name: {"num_partitions": n, "replication_factor": 1} for name, n in topics.items() if name not in existing}
        if wanted:
            try:
                admin.create_topics(wanted, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
    finally:
        admin.close()


def build_consumer(bootstrap_servers: str, group_id: str, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer-group member with manual commits (offsets are committed after the outputs are acked)."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 2_000,
        "max_poll_records": 2048,
        "max_poll_interval_ms": 300_000,
        "fetch_max_wait_ms": 50,
        # kafka-python can join the group before the topic's metadata is cached; the leader then
        # assigns nothing and only rejoins on the next metadata refresh (default every 5 min).
        # A short refresh bounds that stall to seconds (see also the warm-up in build_consumer).
        "metadata_max_age_ms": 10_000,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    for topic in topics:  # warm the metadata cache so the first assignment sees the partitions
        consumer.partitions_for_topic(topic)
    if topics:
        consumer.subscribe(list(topics), listener=_LoggingRebalanceListener())
    return consumer


def build_producer(bootstrap_servers: str, **overrides: Any) -> KafkaProducer:
    """Idempotent, ``acks=all`` producer; ``linger_ms`` batches a micro-batch's sends into few requests."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
    }
    config.update(overrides)
    return KafkaProducer(**config)
