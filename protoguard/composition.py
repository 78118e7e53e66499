"""The composition root: every long-running process builds its objects from ``Settings`` here.

Why one place: the scorer, the label consumer, the trainer, the demo and the tests all need the
same clients, stores, registry and workers wired the same way (the same Redis prefix for every
store, the same consumer factory that lets a worker replace a stalled consumer). Written once, a
new setting reaches every process; written per caller, it reaches some.

Nothing here runs anything: each function returns an object for the caller to run.
"""
from __future__ import annotations

from typing import Any

import redis
from kafka import KafkaConsumer

from .schemas.settings import Settings
from .stream.clients import build_consumer, build_producer, build_redis
from .stream.labels import LabelWorker
from .stream.reload import ModelWatcher
from .stream.worker import ScoringWorker, WorkerStores
from .trainer.registry import ModelRegistry
from .trainer.retraining import Retrainer, RetrainStores
from .trainer.scheduler import LeaderLock, TrainerService
from .trainer.store import FeatureStore, LabelStore, TrafficReservoir

__all__ = ["build_label_worker", "build_registry", "build_scoring_worker", "build_trainer_service",
           "build_worker_stores"]


def build_registry(settings: Settings, client: redis.Redis | None = None) -> ModelRegistry:
    return ModelRegistry(client or build_redis(settings.redis), prefix=settings.redis.prefix,
                         keep_versions=settings.trainer.keep_versions)


def build_worker_stores(settings: Settings, client: redis.Redis | None = None) -> WorkerStores:
    client = client or build_redis(settings.redis)
    prefix, stream = settings.redis.prefix, settings.stream
    return WorkerStores(client=client, features=FeatureStore(client, prefix=prefix, ttl_s=stream.features_ttl_s),
                        reservoir=TrafficReservoir(client, prefix=prefix, capacity=stream.reservoir_size))


def build_scoring_worker(settings: Settings, *, client: redis.Redis | None = None,
                         random_state: int | None = None) -> ScoringWorker:
    """One member of the scorer group, its consumer replaceable (``stream.join_stall_s``)."""
    k, s = settings.kafka, settings.stream
    client = client or build_redis(settings.redis)

    def new_consumer() -> KafkaConsumer:
        return build_consumer(k, k.consumer_group, k.events_topic, max_poll_records=s.max_batch)

    watcher = ModelWatcher(build_registry(settings, client), poll_s=s.model_poll_s, device=s.device)
    return ScoringWorker(new_consumer(), build_producer(k), watcher=watcher,
                         stores=build_worker_stores(settings, client), kafka=k, stream=s,
                         random_state=random_state, consumer_factory=new_consumer)


def build_label_worker(settings: Settings, client: redis.Redis | None = None) -> LabelWorker:
    """The labels-topic consumer with its own group (labels are not partitioned like events)."""
    k = settings.kafka
    client = client or build_redis(settings.redis)

    def new_consumer() -> KafkaConsumer:
        return build_consumer(k, k.labels_group, k.labels_topic, auto_offset_reset="earliest")

    return LabelWorker(new_consumer(), build_producer(k), consumer_factory=new_consumer,
                       join_stall_s=settings.stream.join_stall_s, max_backoff_s=settings.stream.max_backoff_s,
                       features=FeatureStore(client, prefix=settings.redis.prefix, ttl_s=settings.stream.features_ttl_s),
                       labels=LabelStore(client, prefix=settings.redis.prefix),
                       registry=build_registry(settings, client), kafka=k)


def build_trainer_service(settings: Settings, client: redis.Redis | None = None,
                          mnp_params: dict[str, Any] | None = None) -> TrainerService:
    """The retrainer behind its Redis leader lock (one trainer acts at a time, however many run)."""
    client = client or build_redis(settings.redis)
    prefix = settings.redis.prefix
    stores = RetrainStores(client=client, labels=LabelStore(client, prefix=prefix),
                           reservoir=TrafficReservoir(client, prefix=prefix, capacity=settings.stream.reservoir_size),
                           registry=build_registry(settings, client))
    retrainer = Retrainer(stores, settings.trainer, mnp_params=mnp_params)
    lock = LeaderLock(client, f"{prefix}:trainer:lock", timeout_s=settings.trainer.lock_timeout_s)
    return TrainerService(retrainer, lock, settings.trainer)
