"""Stream benchmark on one broker: (a) bare kafka-python ceiling, (b) protoguard's scorer, (c) River HST.

    python -m protoguard.benchmarks.stream_throughput [--n-events 100000] [--n-features 32] [--partitions 4]

(a) consumes the events topic in a consumer group and produces 2 % of the messages to another
    topic, committing per batch: the most any Python consumer on kafka-python can do here.
(b) protoguard's ScoringWorker (decode, validate, MNP forward pass, alerts, dead letters,
    Redis features + reservoir, commit after acks) on the same topic and partitions.
(c) River's HalfSpaceTrees scoring (score_one + learn_one) the same events one by one after the
    same JSON decoding (orjson), without Kafka: an upper bound for a per-event River scorer.
Then the event-to-alert latency of (b) with events produced at half of (b)'s peak rate.
Starts its own stack on free ports (deploy/), prints a table and writes --out JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import torch

from ..deploy.stack import LocalStack, free_port
from ..schemas.settings import KafkaSettings, StackSettings, StreamSettings
from ..stream.clients import build_consumer, build_producer, build_redis, ensure_topics
from ..stream.reload import ModelWatcher
from ..stream.worker import ScoringWorker, WorkerStores
from ..trainer.detectors.mnp import MNPDetector
from ..trainer.registry import ModelRegistry
from ..trainer.store import FeatureStore, TrafficReservoir
from ..trainer.training import calibrate, finalize_manifest


def _events(n: int, d: int, seed: int = 0) -> tuple[list[bytes], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}" for i in range(d)]
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[rng.random(n) < 0.02] += 4.0
    now = time.time()
    values = [orjson.dumps({"event_id": f"b{i}", "ts": now, "entity": f"h{i % 101}", "features": dict(zip(names, row))})
              for i, row in enumerate(X.round(5).tolist())]
    return values, X, names


def _produce(bootstrap: str, topic: str, values: list[bytes], rate: float = 0.0, stamp: bool = False) -> None:
    producer = build_producer(bootstrap, linger_ms=5)
    start = time.monotonic()
    for i, v in enumerate(values):
        if stamp:  # fresh event time, for latency measurement
            obj = orjson.loads(v)
            obj["ts"] = time.time()
            v = orjson.dumps(obj)
        producer.send(topic, key=str(i % 101).encode(), value=v)
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    producer.flush()
    producer.close()


def bare_loop(bootstrap: str, topic: str, out_topic: str, n: int) -> float:
    consumer = build_consumer(bootstrap, f"bare-{uuid.uuid4().hex[:6]}", topic, max_poll_records=2048)
    producer = build_producer(bootstrap)
    seen = 0
    start = None
    while seen < n:
        polled = consumer.poll(timeout_ms=200, max_records=2048)
        records = [r for rs in polled.values() for r in rs]
        if not records:
            continue
        start = start or time.monotonic()
        for r in records[:: 50]:  # 2 % of the messages
            producer.send(out_topic, value=r.value)
        producer.flush()
        consumer.commit()
        seen += len(records)
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    producer.close()
    return n / elapsed


def river_loop(values: list[bytes], names: list[str]) -> float:
    from river.anomaly import HalfSpaceTrees

    model = HalfSpaceTrees(n_trees=25, height=8, window_size=250, seed=0)
    start = time.monotonic()
    for v in values:
        features = orjson.loads(v)["features"]
        model.score_one(features)
        model.learn_one(features)
    return len(values) / (time.monotonic() - start)


def _model(registry: ModelRegistry, X: np.ndarray, names: list[str]) -> str:
    y = np.zeros(len(X), dtype=np.int64)
    y[np.flatnonzero(np.abs(X).mean(1) > 2)[:10]] = 1
    det = MNPDetector(validation="fixed_epochs", max_epochs=3, pretrain_max_epochs=3, n_batches_per_epoch=16,
                      n_prototypes=4, random_state=0)
    det.fit(X[:5000], y[:5000], feature_names=names)
    threshold, calibration = calibrate(det.score(X[:5000]), alert_budget=0.02)
    weights, manifest = det.save()
    version = registry.register(weights, finalize_manifest(manifest, threshold=threshold, calibration=calibration, summary={}))
    registry.promote(version)
    return version


def _worker(info, topics: dict[str, str], prefix: str, group: str) -> ScoringWorker:
    client = build_redis(info.redis_url)
    kafka = KafkaSettings(bootstrap_servers=info.bootstrap_servers, events_topic=topics["events"],
                          alerts_topic=topics["alerts"], dlq_topic=topics["dlq"], consumer_group=group)
    stream = StreamSettings(max_batch=2048, max_wait_ms=20)
    registry = ModelRegistry(client, prefix=prefix)
    return ScoringWorker(build_consumer(info.bootstrap_servers, group, topics["events"], max_poll_records=2048),
                         build_producer(info.bootstrap_servers), watcher=ModelWatcher(registry), kafka=kafka, stream=stream,
                         stores=WorkerStores(client, FeatureStore(client, prefix=prefix), TrafficReservoir(client, prefix=prefix)))


def protoguard_loop(info, topics: dict[str, str], prefix: str, n: int) -> float:
    worker = _worker(info, topics, prefix, f"pg-{uuid.uuid4().hex[:6]}")
    worker.watcher.start()
    worker.watcher.refresh(force=True)
    done = 0
    start = None
    while done < n:
        outcome = worker.process_one_batch()
        if outcome.n_records:
            start = start or time.monotonic() - 0.0
            done += outcome.n_records
    elapsed = time.monotonic() - start
    worker.close()
    return n / elapsed


def latency_run(info, topics: dict[str, str], prefix: str, values: list[bytes], rate: float) -> dict[str, float]:
    """The scorer in its own process (as deployed), events produced at ``rate`` from this one."""
    env = {**os.environ, "PROTOGUARD_KAFKA__BOOTSTRAP_SERVERS": info.bootstrap_servers,
           "PROTOGUARD_KAFKA__EVENTS_TOPIC": topics["events"], "PROTOGUARD_KAFKA__ALERTS_TOPIC": topics["alerts"],
           "PROTOGUARD_KAFKA__DLQ_TOPIC": topics["dlq"], "PROTOGUARD_KAFKA__CONSUMER_GROUP": f"lat-{uuid.uuid4().hex[:6]}",
           "PROTOGUARD_REDIS__URL": info.redis_url, "PROTOGUARD_REDIS__PREFIX": prefix,
           "PROTOGUARD_STREAM__MAX_WAIT_MS": "10", "OMP_NUM_THREADS": "1"}
    scorer = subprocess.Popen([sys.executable, "-m", "protoguard.cli.main", "--log-level", "WARNING", "score"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)  # join the group, load the model
    _produce(info.bootstrap_servers, topics["events"], values, rate=rate, stamp=True)
    time.sleep(3)
    scorer.terminate()
    scorer.wait(timeout=60)
    consumer = build_consumer(info.bootstrap_servers, f"lat-read-{uuid.uuid4().hex[:6]}", topics["alerts"])
    lat = []
    idle = 0
    while idle < 5:
        polled = consumer.poll(timeout_ms=500)
        if not polled:
            idle += 1
        for rs in polled.values():
            for r in rs:
                alert = orjson.loads(r.value)
                lat.append(r.timestamp / 1000 - datetime.fromisoformat(alert["ts"]).timestamp())
    consumer.close()
    arr = np.asarray(lat)
    return {"n_alerts": int(len(arr)), "p50_ms": float(np.percentile(arr, 50) * 1000),
            "p99_ms": float(np.percentile(arr, 99) * 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-events", type=int, default=100_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--river-events", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("bench-out/stream_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_dir = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    stack = LocalStack(StackSettings(run_dir=run_dir, kafka_port=free_port(), controller_port=free_port(), redis_port=free_port()))
    info = stack.up()
    try:
        values, X, names = _events(args.n_events, args.n_features)
        tok = uuid.uuid4().hex[:6]
        topics = {"events": f"bench-events-{tok}", "alerts": f"bench-alerts-{tok}", "dlq": f"bench-dlq-{tok}",
                  "copy": f"bench-copy-{tok}"}
        ensure_topics(info.bootstrap_servers, {topics["events"]: args.partitions, topics["alerts"]: args.partitions,
                                               topics["dlq"]: 1, topics["copy"]: args.partitions})
        _produce(info.bootstrap_servers, topics["events"], values)
        prefix = f"bench{tok}"
        _model(ModelRegistry(build_redis(info.redis_url), prefix=prefix), X, names)
        a = bare_loop(info.bootstrap_servers, topics["events"], topics["copy"], args.n_events)
        b = protoguard_loop(info, topics, prefix, args.n_events)
        c = river_loop(values[: args.river_events], names)
        lat_topics = {**topics, "events": f"bench-lat-{tok}", "alerts": f"bench-lat-alerts-{tok}"}
        ensure_topics(info.bootstrap_servers, {lat_topics["events"]: args.partitions, lat_topics["alerts"]: args.partitions})
        n_lat = min(len(values), int(b / 2 * 20))  # about 20 s at half of (b)'s peak
        lat = latency_run(info, lat_topics, prefix, values[:n_lat], rate=b / 2)
    finally:
        stack.down()
    result = {"n_events": args.n_events, "n_features": args.n_features, "partitions": args.partitions,
              "a_bare_kafka_python_eps": a, "b_protoguard_eps": b, "c_river_hst_eps": c,
              "b_over_a": b / a, "b_over_c": b / c, "latency_at_half_load": {"rate_eps": b / 2, **lat}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
