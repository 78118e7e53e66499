"""``protoguard demo``: the pipeline end to end on the embedded default (local Kafka + Redis)."""
from __future__ import annotations

import argparse
import time
import uuid
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..deploy.stack import LocalStack
from ..schemas.settings import Settings
from ..stream.clients import build_consumer, build_producer, build_redis, ensure_topics
from ..stream.decode import decode_batch
from ..stream.replay import encode_events, load_dataset, malformed_messages

__all__ = ["bundled_sample", "register"]


def bundled_sample() -> Path:
    return Path(str(resources.files("protoguard") / "data" / "unsw_nb15_sample.npz"))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="run the pipeline end to end on the local stack and a bundled dataset")
    parser.add_argument("--data", type=Path, default=None, help="dataset file (default: the bundled UNSW-NB15 sample)")
    parser.add_argument("--n-events", type=int, default=5000)
    parser.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running afterwards")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    console = Console()
    stack = LocalStack(settings.stack)
    with console.status("starting Kafka + Redis"):
        info = stack.up()
    console.print(f"stack up: Kafka {info.kafka_version} at {info.bootstrap_servers}, Redis at {info.redis_url} "
                  f"({info.startup_s:.1f} s)")
    try:
        dataset = load_dataset(args.data or bundled_sample())
        topic = f"{settings.kafka.events_topic}-demo-{uuid.uuid4().hex[:6]}"
        ensure_topics(info.bootstrap_servers, {topic: settings.kafka.n_partitions})
        producer = build_producer(info.bootstrap_servers)
        rows = dataset.X[: args.n_events]
        for key, value, _ in encode_events(rows, dataset.feature_names, id_prefix="demo"):
            producer.send(topic, key=key, value=value)
        bad = malformed_messages(max(1, args.n_events // 200), dataset.feature_names)
        for value in bad:
            producer.send(topic, value=value)
        producer.flush()
        producer.close()
        consumer = build_consumer(info.bootstrap_servers, f"demo-{uuid.uuid4().hex[:6]}", topic)
        n_ok = n_bad = 0
        started = time.monotonic()
        while n_ok + n_bad < len(rows) + len(bad) and time.monotonic() - started < 60:
            for records in consumer.poll(timeout_ms=500).values():
                batch = decode_batch([r.value for r in records], dataset.feature_names)
                n_ok += len(batch)
                n_bad += len(batch.rejects)
            consumer.commit()
        consumer.close()
        redis_ok = bool(build_redis(info.redis_url).ping())
        table = Table(title="protoguard demo")
        for col in ("events produced", "decoded", "rejected (malformed)", "redis"):
            table.add_column(col)
        table.add_row(str(len(rows) + len(bad)), str(n_ok), str(n_bad), "PONG" if redis_ok else "down")
        console.print(table)
        return 0 if n_ok == len(rows) and n_bad == len(bad) else 1
    finally:
        if not args.keep_stack:
            stack.down()
            console.print("stack down")
