"""``protoguard score --workers N``: N scorer processes on one host, one metrics endpoint, one SIGTERM.

Python scores one batch at a time per process (the GIL), so a host with several cores (or a GPU
that one process cannot keep busy) runs several consumer-group members. Processes, not threads:
each member has its own Kafka clients and its own heartbeat, and one member's stall cannot evict
the others. The parent does no scoring and imports no model code; it

- starts the children (``protoguard score`` with a status directory) and restarts one that dies
  unexpectedly, after a capped backoff;
- serves ``/metrics`` for all of them (prometheus-client's multiprocess mode: each child writes its
  samples to files under ``PROMETHEUS_MULTIPROC_DIR``, the parent aggregates them), ``/healthz``
  (every child alive and looping) and ``/readyz`` (every child serves a model, at least one holds
  partitions: with more children than partitions some members rightly hold none);
- forwards SIGTERM/SIGINT, waits for every child to drain, flush, commit and leave the group, and
  kills a child that has not exited after ``stop_timeout_s``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prom_multiprocess

from .backoff import Backoff
from .observability import HealthServer

__all__ = ["StatusFile", "WorkerSupervisor"]

log = logging.getLogger(__name__)

#: A child whose status file is older than this is reported as stalled by /healthz.
_STALE_STATUS_S = 60.0


class StatusFile:
    """A child's side of /healthz and /readyz: its readiness written to a small JSON file, at most
    once a second (same ``beat``/``stop`` interface as ``HealthServer``)."""

    def __init__(self, path: Path, ready: Any) -> None:
        self.path = path
        self.ready = ready
        self._next_write = 0.0

    def beat(self) -> None:
        now = time.monotonic()
        if now < self._next_write:
            return
        self._next_write = now + 1.0
        ok, checks = self.ready()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "wall": time.time(), "ready": ok, "checks": checks}))
        os.replace(tmp, self.path)  # readers never see half a file

    def stop(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=1.0, max_s=30.0))
    restart_at: float | None = None
    done: bool = False
    #: wall time of the latest spawn: a child gets ``_STALE_STATUS_S`` to write its first status
    #: (loading torch and a model takes a while) before /healthz counts it as stalled
    started_at: float = field(default_factory=lambda: time.time())


class WorkerSupervisor:
    """Runs ``n_workers`` copies of ``child_argv`` (a ``protoguard ... score`` command line)."""

    def __init__(self, child_argv: Sequence[str], n_workers: int, *, metrics_port: int = 0,
                 metrics_host: str = "0.0.0.0", stop_timeout_s: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.child_argv = list(child_argv)
        self.n_workers = n_workers
        self.stop_timeout_s = stop_timeout_s
        self.base_env = dict(os.environ if env is None else env)
        self.workdir = Path(tempfile.mkdtemp(prefix="protoguard-workers-"))
        self.metrics_dir = self.workdir / "metrics"
        self.metrics_dir.mkdir()
        self.children: list[_Child] = []
        self._stopping = False
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        self.health = HealthServer(registry, self.readiness, port=metrics_port, host=metrics_host)
        self.health.liveness = self.liveness

    # ------------------------------------------------------------------ children
    def _status_path(self, index: int) -> Path:
        return self.workdir / f"worker-{index}.json"

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        env = {**self.base_env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        argv = [*self.child_argv, "--status-file", str(self._status_path(index))]
        process = subprocess.Popen(argv, env=env)
        log.info("worker %d started (pid %d)", index, process.pid)
        return process

    def _statuses(self) -> list[dict[str, Any]]:
        out = []
        for child in self.children:
            try:
                out.append(json.loads(self._status_path(child.index).read_text()))
            except (FileNotFoundError, ValueError):
                out.append({})
        return out

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        statuses = self._statuses()
        alive = [c.process.poll() is None for c in self.children]
        models = [bool(s.get("checks", {}).get("model_loaded")) for s in statuses]
        partitions = [bool(s.get("checks", {}).get("partitions_assigned")) for s in statuses]
        checks = {"workers_alive": all(alive), "model_loaded": all(models), "partitions_assigned": any(partitions)}
        return all(checks.values()), checks

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = time.time()
        ages = [now - s["wall"] if "wall" in s else None for s in self._statuses()]
        alive = [c.process.poll() is None or c.done for c in self.children]
        fresh = [(a is not None and a < _STALE_STATUS_S) or now - c.started_at < _STALE_STATUS_S
                 for a, c in zip(ages, self.children) if not c.done]
        ok = all(alive) and all(fresh)
        return ok, {"workers": len(self.children), "workers_alive": sum(alive), "oldest_status_s": max((a for a in ages if a), default=0)}

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self) -> int:
        """Start everything, supervise until stopped (or every child finished by itself), drain; exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.health.start()
        log.info("supervisor: %d workers, metrics for all on :%d", self.n_workers, self.health.port)
        self.children = [_Child(i, self._spawn(i)) for i in range(self.n_workers)]
        try:
            while not self._stopping and not all(c.done for c in self.children):
                self.health.beat()
                self._reap_and_restart()
                time.sleep(0.2)
        finally:
            self._stop_children()
            self.health.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
        failed = [c.process.returncode for c in self.children if c.process.returncode not in (0, -signal.SIGTERM)]
        return 1 if failed and not self._stopping else 0

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.done:
                continue
            code = child.process.poll()
            if code is None:
                continue
            if code == 0:  # finished by itself (--exit-when-idle-s): not a failure
                child.done = True
                prom_multiprocess.mark_process_dead(child.process.pid, path=str(self.metrics_dir))
                continue
            if child.restart_at is None:
                prom_multiprocess.mark_process_dead(child.process.pid, path=str(self.metrics_dir))
                child.restart_at = now + child.backoff.failed()
                log.error("worker %d (pid %d) exited with %d; restarting in %.1f s", child.index, child.process.pid,
                          code, child.restart_at - now)
            elif now >= child.restart_at:
                child.process, child.restart_at, child.started_at = self._spawn(child.index), None, time.time()

    def _stop_children(self) -> None:
        running = [c for c in self.children if c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0f s; killing it", child.index, self.stop_timeout_s)
                child.process.kill()
                child.process.wait()
