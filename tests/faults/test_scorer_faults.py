"""The scorer under faults, on the real stack: it recovers instead of exiting, and nothing is lost.

Every case checks the same invariant, from the outside (the topics and the group's offsets):
events in = scored + dead-lettered (committed offsets cover every message; the alerts are exactly
the served model's offline alerts; every bad message is one dead letter), repeated alerts only
with an equal ``alert_id``, and the scorer process still running.
"""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from protoguard.deploy.stack import free_port
from protoguard.schemas.alerts import alert_id
from protoguard.stream.clients import build_producer, build_redis
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.store import FeatureStore, LabelStore
from tests.fixtures.pipeline import FEATURES, Pipeline, alerts_of, fit_tiny_model, metric_sum, synthetic_traffic

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@dataclass
class Served:
    version: str
    detector: MNPDetector
    threshold: float


def _install(p: Pipeline, seed: int, *, device: str | None = None) -> Served:
    weights, manifest, det = fit_tiny_model(seed)
    if device is not None:  # a manifest written on another machine (e.g. a GPU trainer)
        manifest = manifest.model_copy(update={"params": {**manifest.params, "device": device}})
    registry = p.registry()
    version = registry.register(weights, manifest)
    registry.promote(version)
    return Served(version, det, float(manifest.threshold))


def _hang(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def _start(p: Pipeline, tmp_path: Path, name: str = "scorer", **env: str):
    return p.start_process(["score"], log=tmp_path / f"{name}.log",
                           env={"PROTOGUARD_STREAM__MAX_BACKOFF_S": "2", **env})


def check_invariant(p: Pipeline, served: Served, X: np.ndarray, ids: list[str], n_bad: int, scorer,
                    *, timeout_s: float = 180) -> dict[str, int]:
    """Events in = scored + dead-lettered; alerts equal offline scoring; repeated alerts share their id."""
    n_in = len(ids) + n_bad
    p.wait_until(lambda: p.committed() >= n_in, timeout_s, f"{n_in} messages committed")
    assert scorer.poll() is None, "the scorer exited\n" + p.process_report()
    dead = p.drain(p.dlq, expect_at_least=n_bad, quiet_s=2)
    letters = {orjson.loads(r.value)["dead_letter_id"] for r in dead}
    by_event: dict[str, set[str]] = defaultdict(set)
    n_alert_records = 0
    for a in alerts_of(p.drain(p.alerts, quiet_s=2)):
        by_event[a["event_id"]].add(a["alert_id"])
        n_alert_records += 1
    expected = {ids[i]: alert_id(ids[i], served.version)
                for i in np.flatnonzero(~(served.detector.score(X) <= np.float32(served.threshold)))}
    got = {e: next(iter(v)) for e, v in by_event.items()}
    assert all(len(v) == 1 for v in by_event.values()), "an event was alerted with two different ids"
    assert got == expected, f"missing {len(set(expected) - set(got))}, unexpected {len(set(got) - set(expected))}"
    assert len(letters) == n_bad, f"{len(letters)} distinct dead letters for {n_bad} bad messages"
    stats = {"in": n_in, "scored": len(ids), "alerts": len(got), "alert_records": n_alert_records,
             "dead_letters": len(dead), "distinct_dead_letters": len(letters), "lost": 0, "scorer_up": True}
    print("fault-stats", orjson.dumps(stats).decode())  # the fault table in the closing note (pytest -s)
    return stats


def test_redis_hung_under_load_scoring_and_alerting_go_on(pipeline: Pipeline, tmp_path: Path) -> None:
    served = _install(pipeline, seed=21)
    scorer = _start(pipeline, tmp_path)
    X, _ = synthetic_traffic(12_000, seed=22)
    ids, n_bad = pipeline.produce(X[:4000], n_bad=20)
    pipeline.wait_scored(2000)
    more, _ = pipeline.produce(X[4000:], start=4000)
    _hang(pipeline.stack.redis_pid, 20)  # longer than the client's socket timeout
    check_invariant(pipeline, served, X, ids + more, n_bad, scorer)
    # Writes resumed: a batch after the outage is stored again.
    late = synthetic_traffic(500, seed=23)[0]
    late_ids, _ = pipeline.produce(late, start=20_000)
    store = FeatureStore(build_redis(pipeline.stack.redis_url), prefix=pipeline.prefix, ttl_s=3600)
    pipeline.wait_until(lambda: len(store.lookup(late_ids, len(FEATURES))) == len(late_ids), 60,
                        "features stored again")


def test_scorer_started_while_redis_is_down_waits_then_serves(pipeline: Pipeline, tmp_path: Path) -> None:
    served = _install(pipeline, seed=24)
    X, _ = synthetic_traffic(3000, seed=25)
    ids, n_bad = pipeline.produce(X, n_bad=10)
    os.kill(pipeline.stack.redis_pid, signal.SIGSTOP)
    try:
        scorer = _start(pipeline, tmp_path)
        time.sleep(15)
        assert scorer.poll() is None, "the scorer exited while Redis was down\n" + pipeline.process_report()
        assert pipeline.committed() == 0  # no model to score with: nothing consumed, nothing committed
    finally:
        os.kill(pipeline.stack.redis_pid, signal.SIGCONT)
    check_invariant(pipeline, served, X, ids, n_bad, scorer)


def test_broker_hung_under_load_nothing_lost(pipeline: Pipeline, tmp_path: Path) -> None:
    served = _install(pipeline, seed=26)
    scorer = _start(pipeline, tmp_path)
    X, _ = synthetic_traffic(10_000, seed=27)
    ids, n_bad = pipeline.produce(X[:5000], n_bad=20)
    pipeline.wait_scored(1500)
    _hang(pipeline.stack.kafka_pid, 20)
    more, _ = pipeline.produce(X[5000:], start=5000)
    check_invariant(pipeline, served, X, ids + more, n_bad, scorer, timeout_s=240)


def test_poison_pill_becomes_a_bounded_dead_letter_and_scoring_goes_on(pipeline: Pipeline, tmp_path: Path) -> None:
    served = _install(pipeline, seed=28)
    pill = b'{"event_id": "pill", "ts": 1, "entity": "h", "features": {"f0": "' + b"x" * 900_000 + b'"}}'
    producer = build_producer(pipeline.stack.bootstrap_servers, max_request_size=2 * 1024 * 1024)
    for partition in range(4):
        producer.send(pipeline.events, value=pill, partition=partition)
    producer.flush()
    producer.close()
    X, _ = synthetic_traffic(4000, seed=29)
    ids, _ = pipeline.produce(X)
    scorer = _start(pipeline, tmp_path)
    check_invariant(pipeline, served, X, ids, 4, scorer)
    letters = [orjson.loads(r.value) for r in pipeline.drain(pipeline.dlq, expect_at_least=4, quiet_s=1)]
    for letter in letters:
        assert letter["truncated"] and letter["original_size"] == len(pill)
        assert letter["original_sha256"] == hashlib.sha256(pill).hexdigest()
        assert base64.b64decode(letter["original_b64"]) == pill[: len(base64.b64decode(letter["original_b64"]))]
        assert len(orjson.dumps(letter)) < 200_000


def test_values_at_the_edge_of_float32_are_alerted_or_dead_lettered_never_missed(pipeline: Pipeline,
                                                                                 tmp_path: Path) -> None:
    served = _install(pipeline, seed=30)
    X, _ = synthetic_traffic(2000, seed=31)
    X = X.astype(np.float64)
    edge_rows = np.arange(0, 2000, 20)
    X[edge_rows, 0] = 3.4e38  # finite in float32, far outside anything the model saw
    X[edge_rows[::2], 1] = 1e39  # beyond float32: must be refused with the field named
    producer = build_producer(pipeline.stack.bootstrap_servers)
    ids = []
    for i, row in enumerate(X):
        event = {"event_id": f"edge-{i}", "ts": 1_700_000_000, "entity": "h", "features": dict(zip(FEATURES, row.tolist()))}
        producer.send(pipeline.events, value=orjson.dumps(event))
        ids.append(f"edge-{i}")
    producer.flush()
    producer.close()
    scorer = _start(pipeline, tmp_path)
    pipeline.wait_until(lambda: pipeline.committed() >= len(X), 180, "every edge event committed")
    dead = {orjson.loads(base64.b64decode(orjson.loads(r.value)["original_b64"]))["event_id"]: orjson.loads(r.value)
            for r in pipeline.drain(pipeline.dlq, expect_at_least=len(edge_rows[::2]), quiet_s=2)}
    alerted = {a["event_id"] for a in alerts_of(pipeline.drain(pipeline.alerts, quiet_s=2))}
    edge_ids = {ids[i] for i in edge_rows}
    assert {ids[i] for i in edge_rows[::2]} == set(dead)
    assert all(FEATURES[1] in d["error_message"] for d in dead.values())
    missed = edge_ids - set(dead) - alerted
    assert not missed, f"{len(missed)} extreme events neither alerted nor dead-lettered"
    assert scorer.poll() is None
    del served


def test_a_model_the_scorer_cannot_load_keeps_the_old_one_serving(pipeline: Pipeline, tmp_path: Path) -> None:
    served = _install(pipeline, seed=32)
    port = free_port()
    scorer = _start(pipeline, tmp_path, PROTOGUARD_STREAM__METRICS_PORT=str(port),
                    PROTOGUARD_STREAM__METRICS_HOST="127.0.0.1", PROTOGUARD_STREAM__DEVICE="cpu")
    X, _ = synthetic_traffic(3000, seed=33)
    ids, _ = pipeline.produce(X[:1500])
    pipeline.wait_scored(1500)
    # A model trained on a GPU machine: the CPU scorer loads it on its own device.
    gpu_made = _install(pipeline, seed=34, device="cuda")
    # Then a blob that does not match its manifest, made current behind the registry's back.
    registry = pipeline.registry()
    weights, manifest, _ = fit_tiny_model(35)
    bad_version = registry.register(weights, manifest)
    registry.client.set(registry._key(f"blob:{bad_version}"), weights[:-10] + b"0123456789")  # noqa: SLF001
    pipeline.wait_until(lambda: _served(port) == gpu_made.version, 60, "the GPU-made model served on CPU")
    registry.client.set(registry._key("current"), bad_version)  # noqa: SLF001
    pipeline.wait_until(lambda: metric_sum(port, "protoguard_model_load_failures_total") >= 1, 60,
                        "the load failure counted")
    more, _ = pipeline.produce(X[1500:], start=1500)
    pipeline.wait_until(lambda: pipeline.committed() >= len(X), 120, "events after the bad promotion scored")
    assert scorer.poll() is None and _served(port) == gpu_made.version
    del served, ids, more


def _served(port: int) -> str | None:
    import re
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        m = re.match(r'protoguard_model_info\{.*version="([^"]+)".*\} 1\.0', line)
        if m:
            return m.group(1)
    return None


def test_redelivered_bad_messages_keep_their_dead_letter_id(pipeline: Pipeline, tmp_path: Path) -> None:
    served = _install(pipeline, seed=36)
    X, _ = synthetic_traffic(20_000, seed=37)
    ids, n_bad = pipeline.produce(X, n_bad=200)
    scorer = _start(pipeline, tmp_path, "first")
    pipeline.wait_scored(3000)
    scorer.send_signal(signal.SIGKILL)
    scorer.wait(timeout=30)
    again = _start(pipeline, tmp_path, "second")
    stats = check_invariant(pipeline, served, X, ids, n_bad, again)
    assert stats["distinct_dead_letters"] == n_bad <= stats["dead_letters"]


def test_label_consumer_waits_out_a_hung_redis_and_loses_no_label(pipeline: Pipeline, tmp_path: Path) -> None:
    """The label consumer joins labels with features in Redis: with Redis hung past the client's
    socket timeout its batch fails, and it must rewind and retry, not exit or skip the labels."""
    _install(pipeline, seed=27)
    scorer = _start(pipeline, tmp_path)
    X, _ = synthetic_traffic(600, seed=28)
    ids, _ = pipeline.produce(X)
    pipeline.wait_scored(600)  # the scorer stored every event's features
    labeller = pipeline.start_process(["labels"], log=tmp_path / "labels.log",
                                      env={"PROTOGUARD_STREAM__MAX_BACKOFF_S": "2"})
    time.sleep(3)  # joined its group
    now = time.time()
    messages = [orjson.dumps({"event_id": ids[i], "label": "anomaly" if i % 2 else "normal", "analyst": "ana",
                              "ts": now}) for i in range(40)]
    os.kill(pipeline.stack.redis_pid, signal.SIGSTOP)
    try:
        producer = build_producer(pipeline.stack.bootstrap_servers)
        for message in messages:
            producer.send(pipeline.labels, value=message)
        producer.flush()
        producer.close()
        time.sleep(20)  # longer than the client's socket timeout: the batch's Redis calls fail
        assert labeller.poll() is None, "the label consumer exited while Redis was hung\n" + pipeline.process_report()
    finally:
        os.kill(pipeline.stack.redis_pid, signal.SIGCONT)
    store = LabelStore(build_redis(pipeline.stack.redis_url), prefix=pipeline.prefix)
    pipeline.wait_until(lambda: store.n_new() == len(messages), 90, "every label stored after Redis came back")
    assert labeller.poll() is None and scorer.poll() is None, pipeline.process_report()
    assert "retrying in" in (tmp_path / "labels.log").read_text()  # the fault was seen, and waited out
