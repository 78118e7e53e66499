"""Soak test of the deployed scorer (not in CI): steady traffic for minutes, optionally with faults.

    python -m protoguard.benchmarks.soak --minutes 10                  # steady load only
    python -m protoguard.benchmarks.soak --minutes 60 --faults         # faults injected at random

Starts its own stack on free ports, registers one model, runs ``protoguard score --workers N``
as a process and produces the bundled UNSW-NB15 events (unique ids) at ``--rate`` per second.
With ``--faults`` it injects, at random intervals, one of: a worker stopped past the session
timeout (SIGSTOP/SIGCONT: eviction and rejoin), a worker killed (the supervisor restarts it),
Redis hung for 20 s, the broker hung for 20 s. At the end it checks the invariants the product
promises and exits non-zero if one fails:

- every produced event was consumed and committed (committed offsets = events in);
- the alerts are exactly the offline alerts of the served model on every produced event (no event
  lost, none alerted twice with different ids: repeated alerts carry the same ``alert_id``), except
  rows scored within 1e-5 of the threshold, which the last float32 bits may put on either side
  (counted and reported);
- the scorer process never exited.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson

from ..deploy.stack import LocalStack, free_port
from ..schemas.alerts import alert_id
from ..schemas.settings import StackSettings
from ..stream.clients import build_admin, build_consumer, build_producer, ensure_topics
from ..stream.replay import encode_events, load_dataset
from .stream_throughput import Shape, _SAMPLE, committed, register_model


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class Faults:
    """Injects one fault at a time, at random intervals, and logs what it did."""

    def __init__(self, scorer: subprocess.Popen[bytes], broker_pid: int, redis_pid: int, mean_gap_s: float,
                 seed: int) -> None:
        self.scorer = scorer
        self.pids = {"broker": broker_pid, "redis": redis_pid}
        self.mean_gap_s = mean_gap_s
        self.rng = random.Random(seed)
        self.log: list[dict[str, object]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _hang(self, pid: int, seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        self._stop.wait(seconds)
        os.kill(pid, signal.SIGCONT)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.expovariate(1 / self.mean_gap_s)):
            kind = self.rng.choice(["evict_worker", "kill_worker", "hang_redis", "hang_broker"])
            workers = _children(self.scorer.pid)
            started = time.time()
            if kind == "evict_worker" and workers:
                self._hang(self.rng.choice(workers), 15.0)
            elif kind == "kill_worker" and workers:
                os.kill(self.rng.choice(workers), signal.SIGKILL)
            elif kind == "hang_redis":
                self._hang(self.pids["redis"], 20.0)
            elif kind == "hang_broker":
                self._hang(self.pids["broker"], 20.0)
            self.log.append({"fault": kind, "at": started, "seconds": round(time.time() - started, 1)})
            print(f"fault: {kind} ({self.log[-1]['seconds']} s)", flush=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1500.0, help="events per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--mean-fault-gap-s", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/soak.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pg-soak-"))
    stack = LocalStack(StackSettings(run_dir=workdir / "stack", kafka_port=free_port(), controller_port=free_port(),
                                     redis_port=free_port()))
    info = stack.up()
    ok = False
    try:
        data = load_dataset(_SAMPLE)
        topics = {"events": "soak-events", "alerts": "soak-alerts", "dlq": "soak-dlq"}
        ensure_topics(info.bootstrap_servers, {topics["events"]: 4, topics["alerts"]: 4, topics["dlq"]: 1})
        shape = Shape("unsw", data.X, data.feature_names, [])
        version = register_model(info.redis_url, "soak", shape)
        group = "soak-scorers"
        env = {**os.environ, "PROTOGUARD_KAFKA__BOOTSTRAP_SERVERS": info.bootstrap_servers,
               "PROTOGUARD_KAFKA__EVENTS_TOPIC": topics["events"], "PROTOGUARD_KAFKA__ALERTS_TOPIC": topics["alerts"],
               "PROTOGUARD_KAFKA__DLQ_TOPIC": topics["dlq"], "PROTOGUARD_KAFKA__CONSUMER_GROUP": group,
               "PROTOGUARD_KAFKA__SESSION_TIMEOUT_MS": "6000", "PROTOGUARD_REDIS__URL": info.redis_url,
               "PROTOGUARD_REDIS__PREFIX": "soak", "OMP_NUM_THREADS": "1"}
        log_path = workdir / "scorer.log"
        with log_path.open("wb") as fh:
            scorer = subprocess.Popen([sys.executable, "-m", "protoguard.cli.main", "score", "--workers",
                                       str(args.workers)], env=env, stdout=fh, stderr=subprocess.STDOUT)
        faults = None
        if args.faults:
            faults = Faults(scorer, info.kafka_pid, info.redis_pid, args.mean_fault_gap_s, args.seed)
            faults.start()
        n_total = int(args.minutes * 60 * args.rate)
        producer = build_producer(info.bootstrap_servers, linger_ms=5)
        start = time.monotonic()
        produced = 0
        while produced < n_total:
            chunk = data.X[produced % len(data.X): produced % len(data.X) + 500]
            for key, value, _ in encode_events(chunk, data.feature_names, id_prefix="soak", start=produced):
                producer.send(topics["events"], key=key, value=value)
            produced += len(chunk)
            delay = start + produced / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.flush()
        producer.close()
        if faults is not None:
            faults.stop()
        admin = build_admin(info.bootstrap_servers)
        deadline = time.monotonic() + 600
        while committed(admin, group) < produced and time.monotonic() < deadline:
            time.sleep(1)
        n_committed = committed(admin, group)
        alive = scorer.poll() is None
        scorer.terminate()
        scorer.wait(timeout=120)

        from ..trainer.detectors.loading import load_detector
        from ..trainer.registry import ModelRegistry
        from ..stream.clients import build_redis

        registry = ModelRegistry(build_redis(info.redis_url), prefix="soak")
        weights, manifest = registry.load(version)
        det = load_detector(weights, manifest)
        X_all = np.resize(data.X, (produced, data.X.shape[1]))
        offline = det.score(X_all)
        threshold = np.float32(manifest.threshold)
        expected = {alert_id(f"soak-{i}", version) for i in np.flatnonzero(offline > threshold)}
        # Scores of one row can differ in the last float32 bits with the batch it was scored in
        # (blocked matrix products), so a row within a hair of the threshold may go either way.
        boundary = {alert_id(f"soak-{i}", version) for i in np.flatnonzero(np.abs(offline - threshold) < 1e-5)}
        reader = build_consumer(info.bootstrap_servers, "soak-read", topics["alerts"])
        by_event: dict[str, set[str]] = defaultdict(set)
        n_alert_records, idle = 0, 0
        while idle < 10:
            polled = reader.poll(timeout_ms=500)
            idle = 0 if polled else idle + 1
            for records in polled.values():
                for r in records:
                    a = orjson.loads(r.value)
                    by_event[a["event_id"]].add(a["alert_id"])
                    n_alert_records += 1
        reader.close()
        got = {i for ids in by_event.values() for i in ids}
        summary = {
            "minutes": args.minutes, "rate": args.rate, "workers": args.workers, "faults": faults.log if faults else [],
            "events_in": produced, "committed": n_committed, "scorer_alive_at_end": alive,
            "alerts_expected": len(expected), "alert_records": n_alert_records, "distinct_alerts": len(got),
            "missing_alerts": len(expected - got), "unexpected_alerts": len(got - expected),
            "events_within_1e-5_of_threshold": len(boundary),
            "missing_alerts_beyond_threshold_jitter": len(expected - got - boundary),
            "unexpected_alerts_beyond_threshold_jitter": len(got - expected - boundary),
            "events_with_conflicting_alert_ids": sum(len(v) > 1 for v in by_event.values()),
        }
        ok = (n_committed >= produced and alive and not summary["missing_alerts_beyond_threshold_jitter"]
              and not summary["unexpected_alerts_beyond_threshold_jitter"]
              and not summary["events_with_conflicting_alert_ids"])
        summary["ok"] = ok
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        if not ok:
            print("scorer log tail:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
    finally:
        stack.down()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
