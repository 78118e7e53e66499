"""The trainer under faults, on the real stack: a trainer that dies mid-fit blocks nobody for longer
than its lock's TTL, and the retrain it was doing is done exactly once by another trainer.

The leader lock ``{prefix}:trainer:lock`` is a token with a TTL that the holder renews every third of
``trainer.lock_timeout_s`` while it fits. A SIGKILLed holder cannot release it nor renew it, so the
lock must expire on its own; until then no other trainer may run, and afterwards one must take the
trigger over (the label count is still above ``min_new_labels`` because the dead run never marked
its labels as trained).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from protoguard.stream.clients import build_producer, build_redis
from protoguard.trainer.detectors.loading import load_detector
from protoguard.trainer.store import LabelStore
from tests.fixtures.pipeline import Pipeline, fit_tiny_model, synthetic_traffic

pytestmark = [pytest.mark.integration, pytest.mark.faults]

_N_EVENTS = 3000
_N_LABELS = 40  # 20 anomalies + 20 normals: exactly one trigger at min_new_labels = 40
_LOCK_TIMEOUT_S = 6

#: both trainers: the label trigger checked twice a second, no scheduled run, a gate that can decide, and a
#: fit of a few seconds (long enough to be caught in: the test reacts within a few tenths of a second)
_TRAINER_ENV = {"PROTOGUARD_TRAINER__LABEL_CHECK_S": "0.5", "PROTOGUARD_TRAINER__INTERVAL_S": "86400",
                "PROTOGUARD_TRAINER__MIN_NEW_LABELS": str(_N_LABELS), "PROTOGUARD_TRAINER__GATE_MIN_LABELS": "5",
                "PROTOGUARD_TRAINER__RANDOM_STATE": "0", "PROTOGUARD_TRAINER__LOCK_TIMEOUT_S": str(_LOCK_TIMEOUT_S),
                "PROTOGUARD_TRAINER__N_EPOCHS": "5", "PROTOGUARD_TRAINER__N_MEMBERS": "1"}

_STARTING = "retrain starting"
_LOCK_HELD = "skipped: another trainer holds the lock"
_OUTCOME = re.compile(r"retrain \(labels\): (promoted|rejected) (\d+)")
_LOG_TS = re.compile(r'"ts":"([^"]+)"')


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, p: Pipeline, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{p.process_report()}")
        time.sleep(poll_s)


def _text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def _log_time(line: str) -> float:
    """Wall-clock time of a JSON log line (``asctime``: local time, milliseconds)."""
    match = _LOG_TS.search(line)
    assert match, line
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _send_labels(p: Pipeline, ids: list[str], y: np.ndarray) -> None:
    now = datetime.now(UTC).isoformat()
    producer = build_producer(p.stack.bootstrap_servers)
    for event_id, value in zip(ids, y):
        producer.send(p.labels, value=orjson.dumps({"event_id": event_id, "label": "anomaly" if value else "normal",
                                                    "analyst": "ana", "ts": now}))
    producer.flush()
    producer.close()


def _stop(proc: subprocess.Popen[bytes], p: Pipeline) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, p.process_report()


def test_a_trainer_killed_mid_fit_its_lock_expires_and_another_trainer_takes_over(pipeline: Pipeline,
                                                                                    tmp_path: Path) -> None:
    """Trainer A takes the lock for a label trigger and is SIGKILLed mid-fit; trainer B, already up
    and refused the lock while A lived, stays refused until A's token expires (its TTL at the kill ran
    out, nobody deleted it), then makes the retrain A never finished: exactly one new version, decided
    (promoted, or rejected by the gate with its recorded decision), ``current`` a version that loads
    and scores, the new-label count back to 0 and the lock released."""
    p = pipeline
    client = build_redis(p.stack.redis_url)
    registry = p.registry()
    labels = LabelStore(client, prefix=p.prefix)
    lock_key = f"{p.prefix}:trainer:lock"

    # A label consumer and two trainers start while the champion is fitted and events go through a real
    # scorer (start-ups overlap: the machine is small). DEBUG shows a trainer refused the lock.
    labeller = p.start_process(["labels"], log=tmp_path / "labels.log")
    logs = [tmp_path / "trainer-1.log", tmp_path / "trainer-2.log"]
    trainers = [p.start_process(["--log-level", "DEBUG", "trainer"], log=log, env=_TRAINER_ENV) for log in logs]
    weights, manifest, _ = fit_tiny_model(seed=31)
    champion = registry.register(weights, manifest)
    registry.promote(champion)
    X, y = synthetic_traffic(_N_EVENTS, seed=32)
    ids, _ = p.produce(X)
    scorer = p.start_scorer(idle_exit_s=None, log=tmp_path / "scorer.log")
    p.wait_scored(_N_EVENTS)
    _stop(scorer, p)
    _wait(lambda: all("trainer up" in _text(log) for log in logs), 90, "both trainers up", p)
    chosen = np.concatenate([np.flatnonzero(y == 1)[:_N_LABELS // 2], np.flatnonzero(y == 0)[:_N_LABELS // 2]])
    _send_labels(p, [ids[i] for i in chosen], y[chosen])

    # One trainer (A) takes the lock and starts fitting; the other (B) is refused while A holds it.
    _wait(lambda: any(_STARTING in _text(log) for log in logs), 90, "a trainer to start the retrain", p, poll_s=0.05)
    a = next(i for i, log in enumerate(logs) if _STARTING in _text(log))
    (trainer_a, log_a), (trainer_b, log_b) = (trainers[a], logs[a]), (trainers[1 - a], logs[1 - a])
    token_a = client.get(lock_key)
    assert token_a is not None, "A logged a retrain without holding the lock"
    _wait(lambda: _LOCK_HELD in _text(log_b), 30, "trainer B refused the lock while A fits", p, poll_s=0.05)
    assert _STARTING not in _text(log_b)

    # SIGKILL A mid-fit: nothing registered, no outcome, its token still in the lock key.
    os.kill(trainer_a.pid, signal.SIGKILL)
    assert trainer_a.wait(timeout=30) == -signal.SIGKILL
    killed_at, killed_wall = time.monotonic(), time.time()
    held, ttl_ms = client.pipeline(transaction=True).get(lock_key).pttl(lock_key).execute()
    assert held == token_a and 0 < ttl_ms <= _LOCK_TIMEOUT_S * 1000, (held, token_a, ttl_ms)
    assert [v.version for v in registry.versions()] == [champion], "A registered a candidate before it was killed"
    assert not _OUTCOME.search(_text(log_a)) and labels.n_new() == _N_LABELS
    _stop(labeller, p)

    # A's token stays until its TTL runs out; B does not start while it is there.
    while client.get(lock_key) == token_a:
        assert _STARTING not in _text(log_b), "B started a retrain while A's lock was still held"
        assert time.monotonic() - killed_at < ttl_ms / 1000 + 5, "A's lock outlived its TTL"
        time.sleep(0.02)
    gone_after_s = time.monotonic() - killed_at
    assert gone_after_s >= ttl_ms / 1000 - 0.25, f"A's lock vanished after {gone_after_s:.2f} s, TTL was {ttl_ms} ms"

    # B takes over and finishes the one retrain of this trigger.
    _wait(lambda: _OUTCOME.search(_text(log_b)) is not None, 90, "trainer B to finish the retrain", p, poll_s=0.25)
    time.sleep(1.5)  # three more label checks: no second run for the same trigger
    text_b = _text(log_b)
    starts_b = [line for line in text_b.splitlines() if _STARTING in line]
    assert len(starts_b) == 1 and _text(log_a).count(_STARTING) == 1, p.process_report()
    assert _log_time(starts_b[0]) >= killed_wall + ttl_ms / 1000 - 0.25, "B's run began before A's lock expired"
    outcomes = _OUTCOME.findall(text_b)
    assert len(outcomes) == 1, outcomes
    decision, version = outcomes[0]

    new = [v for v in registry.versions() if v.version != champion]
    assert [v.version for v in new] == [version], "exactly one new version for the trigger"
    cand = registry.manifest(version)
    assert cand.parent_version == champion and cand.training_summary["trigger"] == "labels"
    assert cand.training_summary["label_seq"] == _N_LABELS
    gate = cand.metrics["gate"]["decision"]
    last_run = orjson.loads(client.get(f"{p.prefix}:trainer:last_run"))
    assert (last_run["decision"], last_run["version"]) == (decision, version)
    current = registry.current_version()
    if decision == "promoted":
        assert gate == "promote" and current == version and registry.status(version)[0] == "promoted"
        assert registry.status(champion)[0] == "retired"
    else:
        assert gate == "reject" and current == champion and registry.status(version)[0] == "rejected"
        assert registry.status(champion)[0] == "promoted"

    # `current` serves: checksum, CPU load and a finite score (the registry's own check), and real rows.
    assert current is not None
    registry.verify(current)
    scores = np.asarray(load_detector(*registry.load(current)).score(X[:100]))
    assert scores.shape == (100,) and np.all(np.isfinite(scores))
    assert labels.n_new() == 0
    assert client.get(lock_key) is None, "B left the lock held after its run"
    assert trainer_b.poll() is None, p.process_report()
    _stop(trainer_b, p)
