"""Stream benchmark of the deployed scorer against the client library's ceiling, on one broker.

    python -m protoguard.benchmarks.stream_throughput [--shapes unsw,synthetic32] [--n-events 60000]

For each event shape (the bundled UNSW-NB15 sample: 186 features, about 3.6 KB of JSON; and
32-feature synthetic events), a 4-partition topic is filled once, then each contender consumes
the whole backlog in its own consumer group, **as a separate process**:

(a) bare kafka-python (``benchmarks/stream_ceiling.py``): consume, produce 2 % to another topic,
    wait for acks, commit, per poll: the most a kafka-python consumer that delivers at least once
    can do here;
(b) ``protoguard score`` with ``--workers 1`` and ``--workers 2`` (decode, validate, 3-member MNP,
    alerts, dead letters, Redis features + reservoir, commit after acks);
(c) River ``HalfSpaceTrees`` (``score_one`` + ``learn_one``) on the same events after orjson
    decoding, in this process and without Kafka: an upper bound for a per-event River scorer;
(d) confluent-kafka doing (a), when installed (the ``bench`` extra).

The clock is the group's committed offsets, sampled every 50 ms: a contender's rate is the events
committed between its first and its last commit over that time (start-up and joining excluded,
for every contender alike). (a), (b) and (d) run ``--rounds`` times, interleaved, and each figure
is the contender's median round: on a shared machine one run can be 1.5x off.

Then (e) the event-to-alert latency of ``protoguard score`` with events produced at half of (b)'s
one-worker rate: the event time is stamped at send, the alert time is the alert record's
CreateTime, and the events topic uses LogAppendTime, so each alert also gives the part after
the broker had the event ("from append"; the rest is the load generator's own queue). (e0) puts
the same load through (a) and times its 2 % copies the same way: how low the latency of a
consumer that does nothing but consume, produce and commit can go on this machine at this rate.
(f) the CPU the idle scorer uses. Every wait has a deadline; a stall prints what stalled
(offsets, process state, log tail) instead of hanging.
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from ..data import bundled_sample
from ..deploy.stack import LocalStack, StackInfo, free_port
from ..schemas.settings import StackSettings
from ..stream.clients import build_admin, build_producer, build_redis, consumer_config, ensure_topics
from ..stream.replay import encode_events, load_dataset
from ..trainer.registry import ModelRegistry

_SAMPLE = bundled_sample()


class Stalled(RuntimeError):
    """A contender stopped making progress before its deadline."""


@dataclass
class Shape:
    name: str
    X: np.ndarray
    names: list[str]
    values: list[bytes]


def make_shape(name: str, n_events: int, seed: int = 0) -> Shape:
    if name == "unsw":
        data = load_dataset(_SAMPLE)
        reps = int(np.ceil(n_events / len(data.X)))
        X = np.concatenate([data.X] * reps)[:n_events]
        names = data.feature_names
    else:
        d = int(name.removeprefix("synthetic"))
        rng = np.random.default_rng(seed)
        names = [f"f{i:02d}" for i in range(d)]
        X = rng.normal(size=(n_events, d)).astype(np.float32)
        X[rng.random(n_events) < 0.02] += 4.0
        X = X.round(5)
    values = [v for _, v, _ in encode_events(X, names, id_prefix=f"{name}")]
    return Shape(name, X, names, values)


def _stamp_templates(values: list[bytes]) -> list[bytes]:
    """What follows each event's ``ts`` value (``encode_events`` writes event_id, then ts, first), so
    that a stamped event costs a byte join: re-encoding 3.6 KB of JSON per event took the load
    generator a third of a core at 4k/s."""
    out = []
    for v in values:
        if not v.startswith(b'{"event_id":'):
            raise ValueError("stamping expects events as encode_events writes them")
        start = v.index(b'"ts":') + 5
        out.append(v[v.index(b",", start):])
    return out


def produce(bootstrap: str, topic: str, values: list[bytes], *, rate: float = 0.0, stamp: bool = False) -> float:
    """Send ``values`` (keyed by entity) at ``rate`` per second (0 = as fast as possible); returns seconds."""
    producer = build_producer(bootstrap, linger_ms=5)
    templates = _stamp_templates(values) if stamp else None
    start = time.monotonic()
    for i, v in enumerate(values):
        if templates is not None:
            # The event time is the send time, so that latency is measured from here; and a fresh
            # event_id (stamp-N), so that each alert finds its own event (values may repeat).
            v = b'{"event_id":"stamp-%d","ts":%.6f' % (i, time.time()) + templates[i % len(templates)]
        producer.send(topic, key=str(i % 101).encode(), value=v)
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    producer.flush()
    producer.close()
    return time.monotonic() - start


def committed(admin: Any, group: str) -> int:
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:  # the group has no coordinator or no commits yet
        return 0
    return int(sum(max(0, o.offset) for o in offsets.values()))


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (``--workers N`` runs N children); 0 once gone."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += _cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def _members_holding_partitions(admin: Any, group: str) -> int:
    """How many members of a Stable group hold partitions (0 while it rebalances or cannot be asked)."""
    try:
        info = admin.describe_groups([group]).get(group) or {}
    except (KafkaError, ValueError):
        return 0
    if str(info.get("group_state", info.get("state", ""))).lower() != "stable":
        return 0
    return sum(1 for member in info.get("members", []) if _assigned_partitions(member))


def _assigned_partitions(member: dict[str, Any]) -> int:
    """Partitions in a member's decoded assignment (kafka-python's ``describe_groups`` form)."""
    assignment = member.get("member_assignment") or {}
    return sum(len(t.get("partitions", [])) for t in assignment.get("assigned_partitions") or [])


def clock_run(admin: Any, group: str, n_events: int, process: subprocess.Popen[bytes], log_path: Path, *,
              deadline_s: float, stall_s: float = 60.0, broker_pid: int | None = None,
              members: int = 1) -> dict[str, float]:
    """Sample the group's committed offsets until ``n_events`` are committed; the rate between the
    first and the last commit, and the CPU (in cores) the contender and the broker used meanwhile.
    With ``members`` > 1 (``--workers N``) the clock starts at the first commit after all of them
    hold partitions: the first member to join takes every partition and starts at once, and the
    rebalance when the others join is start-up too. Raises ``Stalled`` (with what stalled) on no
    progress or a deadline."""
    t_end_deadline = time.monotonic() + deadline_s
    first: tuple[float, int] | None = None
    cpu_at_first: tuple[float, float] = (0.0, 0.0)
    last_progress, last_value = time.monotonic(), 0
    while True:
        now = time.monotonic()
        value = committed(admin, group)
        if value > last_value:
            last_progress, last_value = now, value
            if first is None and (members <= 1 or _members_holding_partitions(admin, group) >= members):
                first = (now, value)
                cpu_at_first = (_tree_cpu_seconds(process.pid), _cpu_seconds(broker_pid) if broker_pid else 0.0)
        if value >= n_events:
            break
        if process.poll() is not None and value < n_events:
            raise Stalled(f"process exited with {process.returncode} at {value}/{n_events} committed; log tail:\n"
                          f"{_tail(log_path)}")
        if now - last_progress > stall_s or now > t_end_deadline:
            raise Stalled(f"no progress for {now - last_progress:.0f} s at {value}/{n_events} committed "
                          f"(process {'alive' if process.poll() is None else 'exited'}); log tail:\n{_tail(log_path)}")
        time.sleep(0.05)
    if first is None:
        raise Stalled(f"all {n_events} events were committed before the group's {members} members all held "
                      "partitions: too few events to time them (raise --n-events)")
    elapsed = max(1e-6, time.monotonic() - first[0])
    out = {"events_per_s": (n_events - first[1]) / elapsed, "window_s": elapsed, "n_events": n_events,
           "first_commit_events": first[1],
           "cpu_cores_contender": (_tree_cpu_seconds(process.pid) - cpu_at_first[0]) / elapsed}
    if broker_pid:
        out["cpu_cores_broker"] = (_cpu_seconds(broker_pid) - cpu_at_first[1]) / elapsed
    return out


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


class Bench:
    """One stack, one Redis prefix; launches contenders as processes and times them."""

    def __init__(self, info: StackInfo, workdir: Path, partitions: int, scorer_overrides: dict[str, str] | None = None) -> None:
        self.info = info
        self.scorer_overrides = scorer_overrides or {}
        self.workdir = workdir
        self.partitions = partitions
        self.admin = build_admin(info.bootstrap_servers)
        self.token = uuid.uuid4().hex[:6]

    def topics(self, name: str, *, append_time: bool = False) -> dict[str, str]:
        """The contender's topics; ``append_time``: the events topic stamps records with the broker's
        append time (LogAppendTime), which splits latency into the producer's part and ours."""
        t = f"{name}-{self.token}"
        topics = {"events": f"bench-events-{t}", "alerts": f"bench-alerts-{t}", "dlq": f"bench-dlq-{t}",
                  "copy": f"bench-copy-{t}"}
        if append_time:
            self.admin.create_topics([NewTopic(topics["events"], self.partitions, 1,
                                               topic_configs={"message.timestamp.type": "LogAppendTime"})])
        ensure_topics(self.info.bootstrap_servers, {topics["events"]: self.partitions, topics["alerts"]: self.partitions,
                                                    topics["dlq"]: 1, topics["copy"]: self.partitions})
        return topics

    def scorer_env(self, topics: dict[str, str], group: str, prefix: str, **extra: str) -> dict[str, str]:
        return {**os.environ, "PROTOGUARD_KAFKA__BOOTSTRAP_SERVERS": self.info.bootstrap_servers,
                "PROTOGUARD_KAFKA__EVENTS_TOPIC": topics["events"], "PROTOGUARD_KAFKA__ALERTS_TOPIC": topics["alerts"],
                "PROTOGUARD_KAFKA__DLQ_TOPIC": topics["dlq"], "PROTOGUARD_KAFKA__CONSUMER_GROUP": group,
                "PROTOGUARD_KAFKA__N_PARTITIONS": str(self.partitions),
                "PROTOGUARD_REDIS__URL": self.info.redis_url, "PROTOGUARD_REDIS__PREFIX": prefix,
                "OMP_NUM_THREADS": "1", **self.scorer_overrides, **extra}

    def launch(self, argv: list[str], env: dict[str, str] | None, label: str) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.workdir / f"{label}-{uuid.uuid4().hex[:4]}.log"
        fh = log_path.open("wb")
        return subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT), log_path

    def scorer(self, topics: dict[str, str], prefix: str, workers: int, n: int, label: str) -> dict[str, float]:
        group = f"pg-{label}-{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "-m", "protoguard.cli.main", "--log-level", "WARNING", "score", "--workers", str(workers)]
        process, log_path = self.launch(argv, self.scorer_env(topics, group, prefix), label)
        try:
            return clock_run(self.admin, group, n, process, log_path, deadline_s=900, broker_pid=self.info.kafka_pid,
                             members=workers)
        finally:
            stop(process)

    def ceiling(self, topics: dict[str, str], client: str, n: int) -> dict[str, float]:
        group = f"bare-{client}-{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "-m", "protoguard.benchmarks.stream_ceiling", "--client", client,
                "--bootstrap", self.info.bootstrap_servers, "--topic", topics["events"], "--out-topic", topics["copy"],
                "--group", group, "--n-events", str(n)]
        process, log_path = self.launch(argv, None, client)
        try:
            return clock_run(self.admin, group, n, process, log_path, deadline_s=900, broker_pid=self.info.kafka_pid)
        finally:
            stop(process)

    def ceiling_latency(self, shape: Shape, rate: float, seconds: float) -> dict[str, float]:
        """(e0) the same load through (a), the bare kafka-python consumer: how low event-to-output
        latency can go on this machine at this rate before any scoring (its 2 % copies are timed)."""
        topics = self.topics(f"{shape.name}-lat0", append_time=True)
        group = f"bare-lat-{uuid.uuid4().hex[:6]}"
        warm = shape.values[:200]
        n = int(rate * seconds)
        argv = [sys.executable, "-m", "protoguard.benchmarks.stream_ceiling", "--client", "kafka-python",
                "--bootstrap", self.info.bootstrap_servers, "--topic", topics["events"], "--out-topic", topics["copy"],
                "--group", group, "--n-events", str(len(warm) + n), "--idle-exit-s", "120"]
        process, log_path = self.launch(argv, None, "latency-ceiling")
        try:
            produce(self.info.bootstrap_servers, topics["events"], warm)
            clock_run(self.admin, group, len(warm), process, log_path, deadline_s=120)
            values = (shape.values * (1 + n // len(shape.values)))[:n]
            produce(self.info.bootstrap_servers, topics["events"], values, rate=rate, stamp=True)
            clock_run(self.admin, group, len(warm) + n, process, log_path, deadline_s=120)
        finally:
            stop(process)
        lat = read_latencies(self.info.bootstrap_servers, topics["copy"], topics["events"],
                             skip_ids={f"{shape.name}-{i}" for i in range(len(warm))})
        return {"rate_eps": rate, "n_events": n, **lat}

    def latency_and_idle(self, shape: Shape, prefix: str, rate: float, seconds: float, idle_s: float) -> dict[str, float]:
        """(e) event-to-alert latency at ``rate``; (f) the scorer's CPU while idle afterwards."""
        topics = self.topics(f"{shape.name}-lat", append_time=True)
        group = f"pg-lat-{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "-m", "protoguard.cli.main", "--log-level", "WARNING", "score"]
        process, log_path = self.launch(argv, self.scorer_env(topics, group, prefix), "latency")
        try:
            warm = shape.values[:200]  # join the group and load the model before the clock starts
            produce(self.info.bootstrap_servers, topics["events"], warm)
            clock_run(self.admin, group, len(warm), process, log_path, deadline_s=120)
            n = int(rate * seconds)
            values = (shape.values * (1 + n // len(shape.values)))[:n]
            produce(self.info.bootstrap_servers, topics["events"], values, rate=rate, stamp=True)
            clock_run(self.admin, group, len(warm) + n, process, log_path, deadline_s=120)
            time.sleep(3.0)  # let the scorer settle into its idle loop
            cpu = _cpu_seconds(process.pid)
            time.sleep(idle_s)
            idle_cpu = (_cpu_seconds(process.pid) - cpu) / idle_s
        finally:
            stop(process)
        lat = read_latencies(self.info.bootstrap_servers, topics["alerts"], topics["events"],
                             skip_ids={f"{shape.name}-{i}" for i in range(len(warm))})
        return {"rate_eps": rate, "n_events": n, **lat, "idle_cpu_share_of_core": idle_cpu}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_all(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets, read without a group (assigned partitions:
    no join to wait for, whatever the broker's initial rebalance delay)."""
    consumer = KafkaConsumer(**{**consumer_config(bootstrap, "unused"), "group_id": None})
    records: list[Any] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise Stalled(f"reading {topic}: not at its end offsets after {timeout_s:.0f} s")
            for part in consumer.poll(timeout_ms=500).values():
                records.extend(part)
    finally:
        consumer.close()
    return records


def _percentiles(prefix: str, values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms)
    if not len(arr):
        return {}
    return {f"{prefix}p50_ms": float(np.percentile(arr, 50)), f"{prefix}p99_ms": float(np.percentile(arr, 99)),
            f"{prefix}max_ms": float(arr.max())}


def read_latencies(bootstrap: str, alerts_topic: str, events_topic: str, skip_ids: set[str]) -> dict[str, float]:
    """Per alert: its CreateTime (stamped by the scorer's send) minus (1) the event's ``ts`` (stamped
    by the load generator just before its send: the end-to-end figure) and (2) the event record's
    LogAppendTime (when the broker had it: the pipeline's own part, without the producer's queue)."""
    appended = {}
    for r in _read_all(bootstrap, events_topic):
        start = r.value.index(b'"event_id":"') + 12
        appended[r.value[start:r.value.index(b'"', start)].decode()] = r.timestamp
    from_send: list[float] = []
    from_append: list[float] = []
    for r in _read_all(bootstrap, alerts_topic):
        output = orjson.loads(r.value)  # an alert, or (the ceiling's copies) the event itself
        if output["event_id"] in skip_ids:
            continue
        ts = output["ts"]
        sent_s = float(ts) if isinstance(ts, (int, float)) else datetime.fromisoformat(ts).timestamp()
        from_send.append(r.timestamp - 1000 * sent_s)
        if output["event_id"] in appended:
            from_append.append(r.timestamp - appended[output["event_id"]])
    if not from_send:
        return {"n_alerts": 0}
    return {"n_alerts": len(from_send), **_percentiles("", from_send), **_percentiles("append_to_alert_", from_append)}


def river_rate(values: list[bytes], seconds: float = 20.0) -> dict[str, float]:
    from river.anomaly import HalfSpaceTrees

    model = HalfSpaceTrees(n_trees=25, height=8, window_size=250, seed=0)
    start = time.monotonic()
    n = 0
    for v in values:
        features = orjson.loads(v)["features"]
        model.score_one(features)
        model.learn_one(features)
        n += 1
        if time.monotonic() - start > seconds:
            break
    return {"events_per_s": n / (time.monotonic() - start), "n_events": n}


def register_model(redis_url: str, prefix: str, shape: Shape) -> str:
    """The product's 3-member MNP (architecture as shipped; few epochs: the fit's quality is not
    what this benchmark measures), threshold at a 2 % alert budget."""
    from ..trainer.bootstrap import bootstrap_model
    from ..trainer.detectors.mnp import MNPDetector

    rows = np.random.default_rng(0).choice(len(shape.X), size=min(5000, len(shape.X)), replace=False)
    X = shape.X[np.sort(rows)]  # a sample of the whole stream, so that about 2 % of it alerts
    y = np.zeros(len(X), dtype=np.int64)
    y[np.argsort(-np.abs(X - X.mean(0)).sum(1))[:10]] = 1
    det = MNPDetector(n_members=3, validation="fixed_epochs", max_epochs=3, pretrain_max_epochs=3,
                      n_batches_per_epoch=16, random_state=0, device="cpu")
    det.fit(X, y, feature_names=shape.names)
    registry = ModelRegistry(build_redis(redis_url), prefix=prefix)
    version = bootstrap_model(det, X, alert_budget=0.02, registry=registry, note="stream benchmark",
                              promote="always").version
    assert version is not None
    return version


def _guarded(label: str, fn: Callable[[], dict[str, float]], stalls: list[str]) -> dict[str, float] | None:
    print(f"  {label} ...", flush=True)
    try:
        result = fn()
    except Stalled as exc:
        stalls.append(f"{label}: {exc}")
        print(f"  {label}: STALLED: {exc}", flush=True)
        return None
    print(f"  {label}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})}",
          flush=True)
    return result


def run_shape(bench: Bench, shape: Shape, args: argparse.Namespace, stalls: list[str]) -> dict[str, Any]:
    print(f"shape {shape.name}: {len(shape.values)} events, {len(shape.names)} features, "
          f"{np.mean([len(v) for v in shape.values[:1000]]):.0f} B/event", flush=True)
    topics = bench.topics(shape.name)
    produce(bench.info.bootstrap_servers, topics["events"], shape.values)
    prefix = f"bench{bench.token}{shape.name}"
    register_model(bench.info.redis_url, prefix, shape)
    n = len(shape.values)
    out: dict[str, Any] = {"n_events": n, "n_features": len(shape.names),
                           "bytes_per_event": float(np.mean([len(v) for v in shape.values]))}
    only = set(args.only.split(","))
    try:
        import confluent_kafka  # noqa: F401
        has_confluent = True
    except ImportError:
        has_confluent = False
        out["d_confluent"] = None
    timed: dict[str, tuple[str, Callable[[], dict[str, float]]]] = {
        "a": ("a_kafka_python", lambda: bench.ceiling(topics, "kafka-python", n)),
        "b1": ("b_scorer_1", lambda: bench.scorer(topics, prefix, 1, n, "w1")),
        "b2": ("b_scorer_2", lambda: bench.scorer(topics, prefix, 2, n, "w2")),
        "d": ("d_confluent", lambda: bench.ceiling(topics, "confluent-kafka", n)),
    }
    labels = {"a": "(a) bare kafka-python", "b1": "(b) protoguard score --workers 1",
              "b2": "(b) protoguard score --workers 2", "d": "(d) confluent-kafka"}
    # Rounds interleave the contenders, so that a shared machine's slow spells fall on all of them
    # alike; each contender's figure is its median round (every round is kept in "rounds").
    runs: dict[str, list[dict[str, float]]] = {}
    for round_no in range(args.rounds):
        for key, (name, fn) in timed.items():
            if key in only and (key != "d" or has_confluent):
                label = labels[key] + (f", round {round_no + 1}/{args.rounds}" if args.rounds > 1 else "")
                result = _guarded(label, fn, stalls)
                if result is not None:
                    runs.setdefault(name, []).append(result)
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["events_per_s"])
        out[name] = {**ordered[(len(ordered) - 1) // 2], "rounds": [r["events_per_s"] for r in results]}
    if "c" in only:
        out["c_river_hst"] = _guarded("(c) River HalfSpaceTrees", lambda: river_rate(shape.values), stalls)
    b1 = out.get("b_scorer_1")
    if "e" in only and (b1 or args.latency_rate) and args.latency_s > 0:
        rate = args.latency_rate or b1["events_per_s"] / 2
        out["e_latency_half_load"] = _guarded(
            "(e) latency at half load + (f) idle CPU",
            lambda: bench.latency_and_idle(shape, prefix, rate, args.latency_s, args.idle_s), stalls)
        if "e0" in only:
            out["e0_ceiling_latency"] = _guarded(
                "(e0) the bare kafka-python consumer's latency at the same load",
                lambda: bench.ceiling_latency(shape, rate, args.latency_s), stalls)
    return out


def _rate(result: dict[str, Any] | None) -> float | None:
    return None if not result else float(result["events_per_s"])


def table(results: dict[str, Any]) -> str:
    lines = ["| shape | (a) kafka-python | (b) scorer, 1 worker | (b) 2 workers | (c) River HST | (d) confluent-kafka "
             "| b1/a | b2/b1 | b1/c | p50 / p99 ms at half load | (a) at that load | idle CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["shapes"].items():
        a, b1, b2, c, d = (_rate(r.get(k)) for k in ("a_kafka_python", "b_scorer_1", "b_scorer_2", "c_river_hst", "d_confluent"))
        lat = r.get("e_latency_half_load") or {}

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:,.0f}"

        def ratio(x: float | None, y: float | None) -> str:
            return "-" if not x or not y else f"{x / y:.2f}"
        latency = f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f}" if "p50_ms" in lat else "-"
        if "append_to_alert_p50_ms" in lat:
            latency += f" ({lat['append_to_alert_p50_ms']:.1f} / {lat['append_to_alert_p99_ms']:.1f} from append)"
        idle = f"{100 * lat['idle_cpu_share_of_core']:.1f} %" if "idle_cpu_share_of_core" in lat else "-"
        lat0 = r.get("e0_ceiling_latency") or {}
        floor = f"{lat0['p50_ms']:.1f} / {lat0['p99_ms']:.1f}" if "p50_ms" in lat0 else "-"
        if "append_to_alert_p50_ms" in lat0:
            floor += f" ({lat0['append_to_alert_p50_ms']:.1f} / {lat0['append_to_alert_p99_ms']:.1f} from append)"
        lines.append(f"| {name} | {f(a)} | {f(b1)} | {f(b2)} | {f(c)} | {f(d)} | {ratio(b1, a)} | {ratio(b2, b1)} "
                     f"| {ratio(b1, c)} | {latency} | {floor} | {idle} |")
    lines += ["", "CPU used while each contender ran (cores; the machine has "
              f"{results.get('cpus', '?')}, shared by the contender, the broker and Redis):", "",
              "| shape | contender | events/s | contender cores | broker cores |", "|---|---|---|---|---|"]
    for name, r in results["shapes"].items():
        for key in ("a_kafka_python", "b_scorer_1", "b_scorer_2", "d_confluent"):
            run = r.get(key) or {}
            if "cpu_cores_contender" in run:
                lines.append(f"| {name} | {key} | {run['events_per_s']:,.0f} | {run['cpu_cores_contender']:.2f} "
                             f"| {run.get('cpu_cores_broker', float('nan')):.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="unsw,synthetic32")
    parser.add_argument("--n-events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of (a), (b), (d); each figure is the median round (default 3)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-s", type=float, default=20.0, help="seconds of traffic at half load (0 = skip)")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--only", default="a,b1,b2,c,d,e,e0", help="contenders to run (a,b1,b2,c,d,e,e0)")
    parser.add_argument("--latency-rate", type=float, default=0.0,
                        help="events/s for (e) (default: half of (b)'s one-worker rate)")
    parser.add_argument("--scorer-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every `protoguard score` run, e.g. PROTOGUARD_KAFKA__LINGER_MS=0 (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/stream_throughput.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    # A new group's first join waits 12 s for more members: the N processes of `--workers N` start
    # together but import torch for seconds, and without the wait the first to join would take every
    # partition and most of the backlog before the others arrive (excluded from every clock anyway).
    stack = LocalStack(StackSettings(run_dir=workdir / "stack", kafka_port=free_port(), controller_port=free_port(),
                                     redis_port=free_port(), group_initial_rebalance_delay_ms=12_000))
    info = stack.up()
    stalls: list[str] = []
    results: dict[str, Any] = {"partitions": args.partitions, "cpus": os.cpu_count(), "shapes": {},
                               "load_average_at_start": os.getloadavg()}
    try:
        overrides = dict(item.split("=", 1) for item in args.scorer_env)
        results["scorer_env"] = overrides
        bench = Bench(info, workdir, args.partitions, overrides)
        for name in args.shapes.split(","):
            results["shapes"][name] = run_shape(bench, make_shape(name, args.n_events), args, stalls)
    finally:
        stack.down()
    results["stalls"] = stalls
    results["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))
    if stalls:
        print("\nSTALLED:\n" + "\n".join(stalls))
    return 1 if stalls else 0


if __name__ == "__main__":
    raise SystemExit(main())
