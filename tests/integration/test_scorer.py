"""The scorer on the real stack: nothing lost, alerts equal offline scoring, crash/restart, hot reload, sharing."""
from __future__ import annotations

import signal
import time
from collections import defaultdict

import numpy as np
import pytest

from kafka.errors import KafkaError

from protoguard.schemas.alerts import alert_id
from protoguard.stream.clients import build_admin, build_redis
from protoguard.trainer.store import FeatureStore
from tests.fixtures.pipeline import N_FEATURES, Pipeline, alerts_of, synthetic_traffic

pytestmark = pytest.mark.integration


def _scored_ids(p: Pipeline, ids: list[str]) -> set[str]:
    store = FeatureStore(build_redis(p.stack.redis_url), prefix=p.prefix, ttl_s=3600)
    found: set[str] = set()
    for i in range(0, len(ids), 5000):
        found |= set(store.lookup(ids[i:i + 5000], N_FEATURES))
    return found


def _partitions(member: dict) -> list[int]:
    assignment = member.get("member_assignment")
    if not isinstance(assignment, dict):  # empty bytes while the group is rebalancing
        return []
    return [p for t in assignment.get("assigned_partitions", []) for p in t["partitions"]]


def test_50k_events_all_scored_or_dead_lettered_and_alerts_match_offline(pipeline: Pipeline, tmp_path) -> None:
    version, det = pipeline.install_model(seed=1)
    X, _ = synthetic_traffic(50_000, seed=7)
    ids, n_bad = pipeline.produce(X, n_bad=300)
    scorer = pipeline.start_scorer(log=tmp_path / "scorer.log")
    assert scorer.wait(timeout=300) == 0, (tmp_path / "scorer.log").read_text()[-3000:]

    dead = pipeline.drain(pipeline.dlq, expect_at_least=n_bad)
    alerts = alerts_of(pipeline.drain(pipeline.alerts))
    scored = _scored_ids(pipeline, ids)
    assert len(dead) == n_bad
    assert scored == set(ids), f"{len(set(ids) - scored)} events neither scored nor dead-lettered"

    manifest = pipeline.registry().manifest(version)
    offline = det.score(X) > np.float32(manifest.threshold)
    expected = {alert_id(ids[i], version) for i in np.flatnonzero(offline)}
    got = {a["alert_id"] for a in alerts}
    assert got == expected
    assert {a["model_version"] for a in alerts} == {version}
    assert all(a["top_features"] and a["nearest_prototype"] is not None for a in alerts)


def test_sigkill_mid_stream_then_restart_loses_nothing(pipeline: Pipeline, tmp_path) -> None:
    pipeline.install_model(seed=2)
    X, _ = synthetic_traffic(20_000, seed=8)
    ids, n_bad = pipeline.produce(X, n_bad=50)
    scorer = pipeline.start_scorer(idle_exit_s=None, log=tmp_path / "scorer.log")
    pipeline.wait_scored(2000)
    scorer.send_signal(signal.SIGKILL)
    scorer.wait(timeout=30)
    restarted = pipeline.start_scorer(log=tmp_path / "scorer2.log")
    assert restarted.wait(timeout=300) == 0, (tmp_path / "scorer2.log").read_text()[-3000:]

    dead = pipeline.drain(pipeline.dlq, expect_at_least=n_bad)
    assert len({(r.partition, r.offset) for r in dead}) >= n_bad
    assert _scored_ids(pipeline, ids) == set(ids)
    by_event: dict[str, set[str]] = defaultdict(set)
    for a in alerts_of(pipeline.drain(pipeline.alerts)):
        by_event[a["event_id"]].add(a["alert_id"])
    assert by_event and all(len(v) == 1 for v in by_event.values())


def test_model_promoted_mid_stream_switches_alerts_without_losses(pipeline: Pipeline, tmp_path) -> None:
    v1, _ = pipeline.install_model(seed=3)
    scorer = pipeline.start_scorer(log=tmp_path / "scorer.log")
    X, _ = synthetic_traffic(30_000, seed=9)
    first, _ = pipeline.produce(X[:15_000])
    pipeline.wait_scored(15_000)
    v2, _ = pipeline.install_model(seed=4, alert_budget=0.05)
    second, _ = pipeline.produce(X[15_000:], start=15_000)
    assert scorer.wait(timeout=300) == 0, (tmp_path / "scorer.log").read_text()[-3000:]

    records = pipeline.drain(pipeline.alerts)
    versions_by_partition: dict[int, list[str]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        versions_by_partition[r.partition].append(alerts_of([r])[0]["model_version"])
    seen_versions = {v for vs in versions_by_partition.values() for v in vs}
    assert seen_versions == {v1, v2}
    for versions in versions_by_partition.values():  # per partition, v2 only ever follows v1
        assert versions == sorted(versions, key=lambda v: int(v))
    assert _scored_ids(pipeline, first + second) == set(first + second)


def test_two_scorers_share_the_partitions(pipeline: Pipeline, tmp_path) -> None:
    pipeline.install_model(seed=5)
    a = pipeline.start_scorer(idle_exit_s=None, log=tmp_path / "a.log")
    b = pipeline.start_scorer(idle_exit_s=None, log=tmp_path / "b.log")
    X, _ = synthetic_traffic(10_000, seed=10)
    ids, _ = pipeline.produce(X)
    admin = build_admin(pipeline.stack.bootstrap_servers)
    deadline = time.monotonic() + 90
    members: list = []
    try:
        while time.monotonic() < deadline:
            try:
                members = admin.describe_groups([pipeline.group]).get(pipeline.group, {}).get("members", [])
            except KafkaError:  # the group coordinator is not known until the first member joins
                members = []
            if len(members) == 2 and all(_partitions(m) for m in members):
                break
            time.sleep(0.5)
    finally:
        admin.close()
    try:
        assert len(members) == 2, members
        partitions = [p for m in members for p in _partitions(m)]
        assert sorted(partitions) == [0, 1, 2, 3]
        deadline = time.monotonic() + 120
        while _scored_ids(pipeline, ids) != set(ids):
            assert time.monotonic() < deadline, "the two scorers did not score every event"
            time.sleep(1)
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        assert a.wait(timeout=60) == 0 and b.wait(timeout=60) == 0
