"""A scorer never silently leaves its group: eviction and rejoin, an idle scorer's CPU, --workers N."""
from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from protoguard.deploy.stack import free_port
from protoguard.stream.clients import build_admin
from tests.fixtures.pipeline import Pipeline, alerts_of, metric_sum, synthetic_traffic
from tests.integration.test_scorer import _partitions, _scored_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_evicted_scorer_rejoins_and_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    """SIGSTOP under load past the session timeout (6 s here): the broker evicts the member; after
    SIGCONT it notices, rejoins by itself, resumes from the committed offsets and counts the rejoin."""
    pipeline.install_model(seed=11)
    port = free_port()
    scorer = pipeline.start_process(["score"], log=tmp_path / "scorer.log",
                                    env={"PROTOGUARD_STREAM__METRICS_PORT": str(port),
                                         "PROTOGUARD_STREAM__METRICS_HOST": "127.0.0.1"})
    X, _ = synthetic_traffic(24_000, seed=12)
    ids: list[str] = []
    # Traffic keeps flowing while the scorer is stopped, so it is evicted with work in hand.
    producer = threading.Thread(target=lambda: ids.extend(_produce_slowly(pipeline, X)), daemon=True)
    producer.start()
    pipeline.wait_scored(3000)
    scorer.send_signal(signal.SIGSTOP)
    time.sleep(15)
    scorer.send_signal(signal.SIGCONT)
    producer.join(timeout=120)
    assert len(ids) == len(X)

    pipeline.wait_until(lambda: pipeline.committed() >= len(X), 180, "every event committed after the rejoin")
    assert scorer.poll() is None, "the scorer exited instead of rejoining\n" + pipeline.process_report()
    assert metric_sum(port, "protoguard_group_rejoins_total") >= 1
    assert _scored_ids(pipeline, ids) == set(ids)
    by_event: dict[str, set[str]] = defaultdict(set)
    for a in alerts_of(pipeline.drain(pipeline.alerts)):
        by_event[a["event_id"]].add(a["alert_id"])
    assert by_event and all(len(v) == 1 for v in by_event.values())
    scorer.send_signal(signal.SIGTERM)
    assert scorer.wait(timeout=60) == 0, pipeline.process_report()


def test_a_member_whose_join_stalls_replaces_its_consumer_and_a_settled_one_never_does(
        pipeline: Pipeline, tmp_path: Path) -> None:
    """B joins while A is frozen with a 20 s session: the group waits for A, so B's join stalls past
    its 10 s ``join_stall_s`` and B replaces its consumer (counted). Once the group settles, an idle
    B holds its partitions past the stall limit without being replaced again, and nothing is lost.

    B's limit must exceed A's heartbeat interval (a third of its session): a healthy rebalance waits
    that long for A to hear of it, and a shorter limit would replace B in the middle of every one."""
    pipeline.install_model(seed=17)
    port_a, port_b = free_port(), free_port()
    a = pipeline.start_process(["score"], log=tmp_path / "a.log",
                               env={"PROTOGUARD_STREAM__METRICS_PORT": str(port_a),
                                    "PROTOGUARD_STREAM__METRICS_HOST": "127.0.0.1",
                                    "PROTOGUARD_KAFKA__SESSION_TIMEOUT_MS": "20000"})
    X, _ = synthetic_traffic(6000, seed=18)
    ids, _ = pipeline.produce(X[:3000])
    pipeline.wait_until(lambda: pipeline.committed() >= 3000, 120, "A to commit the first half")
    a.send_signal(signal.SIGSTOP)
    b = pipeline.start_process(["score"], log=tmp_path / "b.log",
                               env={"PROTOGUARD_STREAM__METRICS_PORT": str(port_b),
                                    "PROTOGUARD_STREAM__METRICS_HOST": "127.0.0.1",
                                    "PROTOGUARD_STREAM__JOIN_STALL_S": "10"})
    restarts = "protoguard_consumer_restarts_total"
    pipeline.wait_until(lambda: _metric_or_zero(port_b, restarts) >= 1, 90, "B to replace its stalled consumer")
    a.send_signal(signal.SIGCONT)
    later, _ = pipeline.produce(X[3000:], start=3000)
    pipeline.wait_until(lambda: pipeline.committed() >= len(X), 180, "every event committed after the stall")
    assert _scored_ids(pipeline, ids + later) == set(ids + later)

    # After SIGCONT, kafka-python may strand B outside the group (its commit refused mid-rebalance,
    # then no join ever completes: what CI saw); the stall limit replaces B again then. Either way
    # both members must end up holding partitions, and then stay put.
    pipeline.wait_until(lambda: _all_hold_partitions(pipeline, 2), 90, "both members to hold partitions")
    settled = _metric_or_zero(port_b, restarts)
    time.sleep(12)  # past B's stall limit, idle and settled
    assert _metric_or_zero(port_b, restarts) == settled, "a settled member replaced its consumer"
    assert _all_hold_partitions(pipeline, 2)
    assert _metric_or_zero(port_a, restarts) == 0
    assert a.poll() is None and b.poll() is None, pipeline.process_report()
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, pipeline.process_report()


def _metric_or_zero(port: int, name: str) -> float:
    try:
        return metric_sum(port, name)
    except OSError:  # the process is still starting (or frozen): its endpoint is not up yet
        return 0.0


def _produce_slowly(p: Pipeline, X, chunks: int = 24, pause_s: float = 1.0) -> list[str]:
    ids: list[str] = []
    step = len(X) // chunks
    for start in range(0, len(X), step):
        got, _ = p.produce(X[start:start + step], start=start)
        ids += got
        time.sleep(pause_s)
    return ids


def test_idle_scorer_uses_under_three_percent_of_a_core(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.install_model(seed=13)
    scorer = pipeline.start_scorer(idle_exit_s=None, log=tmp_path / "scorer.log")
    X, _ = synthetic_traffic(500, seed=14)
    pipeline.produce(X)
    # Committed, not just scored: a member kafka-python strands in its first rebalance busy-loops
    # until the stall check replaces its consumer (seconds); the claim is about a settled idle scorer.
    pipeline.wait_until(lambda: pipeline.committed() >= len(X), 120, "every event committed")
    time.sleep(3)  # settle into the idle loop
    before = _cpu_seconds(scorer.pid)
    window = 15.0
    time.sleep(window)
    share = (_cpu_seconds(scorer.pid) - before) / window
    scorer.send_signal(signal.SIGTERM)
    assert scorer.wait(timeout=60) == 0
    assert share < 0.03, f"idle scorer used {100 * share:.1f} % of a core"


def test_workers_share_the_group_serve_one_metrics_endpoint_and_stop_together(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.install_model(seed=15)
    port = free_port()
    parent = pipeline.start_process(["score", "--workers", "2"], log=tmp_path / "workers.log",
                                    env={"PROTOGUARD_STREAM__METRICS_PORT": str(port),
                                         "PROTOGUARD_STREAM__METRICS_HOST": "127.0.0.1"})
    # Both workers in the group and the parent ready before traffic: a worker that joins late (torch
    # import on a loaded machine) moves partitions while the test looks, and /readyz is honestly 503
    # during a rebalance (no worker holds a partition).
    pipeline.wait_until(lambda: len(_members(pipeline)) == 2 and _ready(port), 180, "two workers in the group, ready")
    X, _ = synthetic_traffic(8000, seed=16)
    ids, _ = pipeline.produce(X)
    pipeline.wait_until(lambda: pipeline.committed() >= len(X), 180, "the two workers to commit every event")
    pipeline.wait_until(lambda: metric_sum(port, 'protoguard_events_total{outcome="scored"}') >= len(X), 30,
                        "the aggregated metrics to count every event")
    assert _ready(port), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
    assert _scored_ids(pipeline, ids) == set(ids)
    assert len(_members(pipeline)) == 2
    children = [int(pid) for pid in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
    assert len(children) == 2
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=90) == 0, pipeline.process_report()
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "a worker outlived its parent"


def _members(pipeline: Pipeline) -> list[dict]:
    admin = build_admin(pipeline.stack.bootstrap_servers)
    try:
        return admin.describe_groups([pipeline.group]).get(pipeline.group, {}).get("members", [])
    finally:
        admin.close()


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
    except OSError:  # 503 (HTTPError) or not listening yet
        return False


def _all_hold_partitions(pipeline: Pipeline, n_members: int) -> bool:
    members = _members(pipeline)
    return len(members) == n_members and all(_partitions(m) for m in members)
