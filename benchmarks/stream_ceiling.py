"""The ceiling the scorer is measured against: a bare consumer doing only the Kafka part of its job.

    python -m protoguard.benchmarks.stream_ceiling --client kafka-python|confluent-kafka \\
        --bootstrap HOST:PORT --topic T --out-topic O --group G --n-events N

Consume the topic in a consumer group, produce 2 % of the messages to ``--out-topic`` (the
scorer's alert share), wait for their acks, commit, per poll: what any consumer that delivers at
least once must do, and nothing else. Both clients run with their best settings for this job:
kafka-python with the C crc32c, large fetches and the same sizes the scorer uses; confluent-kafka
(librdkafka, C) with batch ``consume``. Run as its own process, like the scorer, and timed by the
same clock (the group's committed offsets, read by the benchmark driver).
"""
from __future__ import annotations

import argparse
import time

__all__ = ["main"]

_SHARE = 50  # one message in 50 is forwarded: 2 %


def run_kafka_python(args: argparse.Namespace) -> int:
    from kafka.structs import OffsetAndMetadata

    from ..stream.checkpoint import poll_offsets
    from ..stream.clients import build_consumer, build_producer

    consumer = build_consumer(args.bootstrap, args.group, args.topic, max_poll_records=args.max_batch)
    producer = build_producer(args.bootstrap)
    done, idle_since = 0, time.monotonic()
    while done < args.n_events and time.monotonic() - idle_since < args.idle_exit_s:
        polled = consumer.poll(timeout_ms=500, max_records=args.max_batch)
        if not polled:
            continue
        idle_since = time.monotonic()
        for records in polled.values():
            for r in records[::_SHARE]:
                producer.send(args.out_topic, value=r.value)
            done += len(records)
        producer.flush()
        _, after = poll_offsets(polled)
        consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in after.items()})
    producer.close()
    consumer.close(autocommit=False)
    return 0


def run_confluent(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.min.bytes": 1, "fetch.wait.max.ms": 200,
                         "max.partition.fetch.bytes": 4 * 1024 * 1024})
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5})
    consumer.subscribe([args.topic])
    done, idle_since = 0, time.monotonic()
    while done < args.n_events and time.monotonic() - idle_since < args.idle_exit_s:
        messages = consumer.consume(num_messages=args.max_batch, timeout=0.5)
        messages = [m for m in messages if m.error() is None]
        if not messages:
            continue
        idle_since = time.monotonic()
        for m in messages[::_SHARE]:
            producer.produce(args.out_topic, value=m.value())
        producer.flush(30)
        consumer.commit(asynchronous=False)
        done += len(messages)
    consumer.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=["kafka-python", "confluent-kafka"], default="kafka-python")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--n-events", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=2048)
    parser.add_argument("--idle-exit-s", type=float, default=30.0)
    args = parser.parse_args()
    return run_kafka_python(args) if args.client == "kafka-python" else run_confluent(args)


if __name__ == "__main__":
    raise SystemExit(main())
