"""``protoguard score``: one scorer process (one consumer-group member) and ``protoguard replay``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer

from ..schemas.errors import ConfigError
from ..schemas.settings import Settings
from ..stream.clients import build_consumer, build_producer, build_redis, ensure_topics
from ..stream.reload import ModelWatcher
from ..stream.supervisor import StatusFile, WorkerSupervisor
from ..stream.replay import encode_events, load_dataset, malformed_messages
from ..stream.worker import ScoringWorker, WorkerStores
from ..trainer.store import FeatureStore, TrafficReservoir
from .clients_from_settings import registry_from_settings

__all__ = ["register"]

log = logging.getLogger("protoguard.score")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    score = sub.add_parser("score", help="run one scorer (a consumer-group member on the events topic)")
    score.add_argument("--exit-when-idle-s", type=float, default=None,
                       help="stop after this many seconds without records (batch jobs, tests)")
    score.add_argument("--workers", type=int, default=1,
                       help="consumer-group members to run as processes on this host (one metrics endpoint for all)")
    score.add_argument("--status-file", type=Path, default=None, help=argparse.SUPPRESS)  # set by --workers' parent
    score.set_defaults(handler=run_score)

    replay = sub.add_parser("replay", help="stream a dataset file (npz/CSV) as events onto a topic")
    replay.add_argument("file", type=Path)
    replay.add_argument("--topic", default=None, help="default: kafka.events_topic")
    replay.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    replay.add_argument("--limit", type=int, default=None)
    replay.add_argument("--contaminate", type=float, default=0.0,
                        help="share of extra malformed messages mixed in (dead-letter testing)")
    replay.add_argument("--id-prefix", default="ev")
    replay.set_defaults(handler=run_replay)


def topic_partitions(settings: Settings) -> dict[str, int]:
    k = settings.kafka
    return {k.events_topic: k.n_partitions, k.alerts_topic: k.n_partitions, k.dlq_topic: 1, k.labels_topic: 1}


def run_score(args: argparse.Namespace, settings: Settings) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    if args.workers > 1:
        return _supervise(args, settings)
    k, s = settings.kafka, settings.stream
    ensure_topics(k, topic_partitions(settings))
    client = build_redis(settings.redis)
    registry = registry_from_settings(settings, client)
    def new_consumer() -> KafkaConsumer:
        return build_consumer(k, k.consumer_group, k.events_topic, max_poll_records=s.max_batch)

    consumer = new_consumer()
    producer = build_producer(k)
    stores = WorkerStores(client=client, features=FeatureStore(client, prefix=settings.redis.prefix, ttl_s=s.features_ttl_s),
                          reservoir=TrafficReservoir(client, prefix=settings.redis.prefix, capacity=s.reservoir_size))
    worker = ScoringWorker(consumer, producer, watcher=ModelWatcher(registry, poll_s=s.model_poll_s, device=s.device),
                           stores=stores, kafka=k, stream=s, consumer_factory=new_consumer)
    worker.install_signal_handlers()
    if args.status_file is not None:  # a child of --workers: the parent serves HTTP for all children
        worker.health = StatusFile(args.status_file, worker.readiness)
        log.info("scorer worker up: group %s, topic %s", k.consumer_group, k.events_topic)
    else:
        port = worker.start_health_server()
        log.info("scorer up: group %s, topic %s, metrics on :%d", k.consumer_group, k.events_topic, port)
    idle_limit = args.exit_when_idle_s
    worker.run(until=(lambda: worker.idle_s() > idle_limit) if idle_limit is not None else None)
    return 0


def _supervise(args: argparse.Namespace, settings: Settings) -> int:
    argv = [sys.executable, "-m", "protoguard.cli.main", "--log-level", args.log_level]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    argv.append("score")
    if args.exit_when_idle_s is not None:
        argv += ["--exit-when-idle-s", str(args.exit_when_idle_s)]
    supervisor = WorkerSupervisor(argv, args.workers, metrics_port=settings.stream.metrics_port,
                                  metrics_host=settings.stream.metrics_host)
    return supervisor.run()


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    topic = args.topic or settings.kafka.events_topic
    ensure_topics(settings.kafka, {topic: settings.kafka.n_partitions})
    dataset = load_dataset(args.file)
    X = dataset.X[: args.limit] if args.limit else dataset.X
    producer = build_producer(settings.kafka)
    bad = malformed_messages(int(round(args.contaminate * len(X))), dataset.feature_names)
    bad_at = set(np.linspace(0, len(X), num=len(bad), endpoint=False).astype(int).tolist()) if bad else set()
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    started = time.monotonic()
    bad_iter = iter(bad)
    for i, (key, value, _) in enumerate(encode_events(X, dataset.feature_names, id_prefix=args.id_prefix)):
        if i in bad_at:
            producer.send(topic, value=next(bad_iter))
        producer.send(topic, key=key, value=value)
        if interval:
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    producer.flush()
    producer.close()
    print(f"replayed {len(X)} events (+{len(bad)} malformed) to {topic} in {time.monotonic() - started:.1f} s")
    return 0
