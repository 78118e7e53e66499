"""Build the clients every long-running command needs from Settings (read once, at the CLI)."""
from __future__ import annotations

from typing import Any

import redis
from kafka import KafkaConsumer

from ..schemas.settings import Settings
from ..stream.clients import build_consumer, build_producer, build_redis
from ..stream.labels import LabelWorker
from ..trainer.registry import ModelRegistry
from ..trainer.retraining import RetrainStores, Retrainer
from ..trainer.scheduler import LeaderLock, TrainerService
from ..trainer.store import FeatureStore, LabelStore, TrafficReservoir

__all__ = ["label_worker_from_settings", "registry_from_settings", "trainer_from_settings"]


def registry_from_settings(settings: Settings, client: redis.Redis | None = None) -> ModelRegistry:
    return ModelRegistry(client or build_redis(settings.redis), prefix=settings.redis.prefix,
                         keep_versions=settings.trainer.keep_versions)


def label_worker_from_settings(settings: Settings, client: redis.Redis | None = None) -> LabelWorker:
    """The labels-topic consumer with its own group (labels are not partitioned like events)."""
    k = settings.kafka
    client = client or build_redis(settings.redis)
    def new_consumer() -> KafkaConsumer:
        return build_consumer(k, k.labels_group, k.labels_topic, auto_offset_reset="earliest")

    return LabelWorker(new_consumer(), build_producer(k), consumer_factory=new_consumer,
                       join_stall_s=settings.stream.join_stall_s,
                       features=FeatureStore(client, prefix=settings.redis.prefix, ttl_s=settings.stream.features_ttl_s),
                       labels=LabelStore(client, prefix=settings.redis.prefix),
                       registry=registry_from_settings(settings, client), kafka=k)


def trainer_from_settings(settings: Settings, client: redis.Redis | None = None,
                          mnp_params: dict[str, Any] | None = None) -> TrainerService:
    client = client or build_redis(settings.redis)
    prefix = settings.redis.prefix
    stores = RetrainStores(client=client, labels=LabelStore(client, prefix=prefix),
                           reservoir=TrafficReservoir(client, prefix=prefix, capacity=settings.stream.reservoir_size),
                           registry=registry_from_settings(settings, client))
    retrainer = Retrainer(stores, settings.trainer, mnp_params=mnp_params)
    lock = LeaderLock(client, f"{prefix}:trainer:lock", timeout_s=settings.trainer.lock_timeout_s)
    return TrainerService(retrainer, lock, settings.trainer)
