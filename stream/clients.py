"""Builders for the Kafka and Redis clients, configured the way protoguard's delivery guarantees need.

Kept in one place so the CLI, the demo and the integration tests make identical clients:
manual commits, an explicit offset reset, an idempotent ``acks=all`` producer, and the fetch and
batching sizes of ``KafkaSettings``. Every builder takes the ``KafkaSettings`` (or, for scripts and
tests, just a bootstrap address, which means default settings); keyword overrides win over both.
"""
from __future__ import annotations

import logging
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import TopicAlreadyExistsError

from ..schemas.errors import ConfigError
from ..schemas.settings import KafkaSettings, RedisSettings

__all__ = ["KafkaTarget", "build_admin", "build_consumer", "build_producer", "build_redis", "consumer_config",
           "ensure_topics", "kafka_common_config", "producer_config"]

KafkaTarget = KafkaSettings | str


log = logging.getLogger("protoguard.kafka")


class _LoggingRebalanceListener(ConsumerRebalanceListener):
    """Logs partition moves: the first thing an operator asks when a consumer looks stuck."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


def build_redis(target: RedisSettings | str) -> redis.Redis:
    """Binary-safe client (``decode_responses=False``): model blobs and feature rows are bytes.

    ``target`` is the ``RedisSettings`` (or, for scripts and tests, just a URL).
    """
    settings = RedisSettings(url=target) if isinstance(target, str) else target
    security = settings.security.redis_py_config(tls=settings.url.startswith("rediss://"))
    return redis.Redis.from_url(settings.url, decode_responses=False, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30, **security)


def _settings(kafka: KafkaTarget) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka


def kafka_common_config(kafka: KafkaTarget) -> dict[str, Any]:
    """What every client needs to reach the cluster: the address and the connection security (SASL/TLS)."""
    k = _settings(kafka)
    return {"bootstrap_servers": k.bootstrap_servers, **k.security.kafka_python_config()}


def consumer_config(kafka: KafkaTarget, group_id: str, **overrides: Any) -> dict[str, Any]:
    """The consumer settings protoguard's delivery guarantees and micro-batches need."""
    k = _settings(kafka)
    config: dict[str, Any] = {
        **kafka_common_config(k),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": k.auto_offset_reset,
        "session_timeout_ms": k.session_timeout_ms,
        # Heartbeats come from kafka-python's background thread; a third of the session timeout
        # leaves two missed beats of slack before the coordinator gives up on the member.
        "heartbeat_interval_ms": max(1_000, k.session_timeout_ms // 3),
        "max_poll_records": 2048,
        "max_poll_interval_ms": 300_000,
        "fetch_min_bytes": k.fetch_min_bytes,
        "fetch_max_wait_ms": k.fetch_max_wait_ms,
        "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
        "fetch_max_bytes": k.fetch_max_bytes,
        # kafka-python can join the group before the topic's metadata is cached; the leader then
        # assigns nothing and only rejoins on the next metadata refresh (default every 5 min).
        # A short refresh bounds that stall to seconds (see also the warm-up in build_consumer).
        "metadata_max_age_ms": 10_000,
    }
    config.update(overrides)
    return config


def producer_config(kafka: KafkaTarget, **overrides: Any) -> dict[str, Any]:
    """Idempotent ``acks=all`` producer; ``linger_ms`` gathers a micro-batch's sends into few requests."""
    k = _settings(kafka)
    compression = None if k.compression_type == "none" else k.compression_type
    _check_codec(compression)
    config: dict[str, Any] = {
        **kafka_common_config(k),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": k.linger_ms,
        "batch_size": k.batch_size,
        "compression_type": compression,
        "max_in_flight_requests_per_connection": 5,
    }
    config.update(overrides)
    return config


def _check_codec(compression: str | None) -> None:
    """Fail at start-up, naming the setting, rather than on the first send."""
    if compression is None:
        return
    from kafka import codec

    available = {"gzip": True, "lz4": codec.has_lz4(), "zstd": codec.has_zstd(), "snappy": codec.has_snappy()}
    if not available.get(compression, False):
        raise ConfigError(f"kafka.compression_type: {compression!r} needs its codec library, which is not installed; "
                          "install protoguard[compression] (lz4, zstandard) or set PROTOGUARD_KAFKA__COMPRESSION_TYPE=none")


def build_admin(kafka: KafkaTarget) -> KafkaAdminClient:
    return KafkaAdminClient(**kafka_common_config(kafka), request_timeout_ms=15_000)


def ensure_topics(kafka: KafkaTarget, topics: dict[str, int]) -> None:
    """Create the topics that do not exist yet (name -> partitions), waiting until they have leaders."""
    admin = build_admin(kafka)
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


def build_consumer(kafka: KafkaTarget, group_id: str, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer-group member with manual commits (offsets are committed after the outputs are acked)."""
    consumer = KafkaConsumer(**consumer_config(kafka, group_id, **overrides))
    for topic in topics:  # warm the metadata cache so the first assignment sees the partitions
        consumer.partitions_for_topic(topic)
    if topics:
        consumer.subscribe(list(topics), listener=_LoggingRebalanceListener())
    return consumer


def build_producer(kafka: KafkaTarget, **overrides: Any) -> KafkaProducer:
    """Idempotent, ``acks=all`` producer sized by ``KafkaSettings`` (linger, batch size, compression)."""
    return KafkaProducer(**producer_config(kafka, **overrides))
