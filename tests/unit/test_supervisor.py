"""stream/supervisor.py without spawning a process: a child's StatusFile (replaced atomically, written at
most once a second) and how WorkerSupervisor aggregates its children's status files into /readyz and
/healthz. Children are stand-ins with ``poll()``; status files are written by the real StatusFile."""
from __future__ import annotations

import http.client
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protoguard.stream import supervisor as supervisor_module
from protoguard.stream.supervisor import StatusFile, WorkerSupervisor, _Child


class Clock:
    """Stands in for the ``time`` module inside stream/supervisor.py."""

    def __init__(self) -> None:
        self.mono, self.wall = 1_000.0, 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeProcess:
    def __init__(self, returncode: int | None = None, pid: int = 4242) -> None:
        self.returncode, self.pid = returncode, pid

    def poll(self) -> int | None:
        return self.returncode


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(supervisor_module, "time", c)
    return c


@pytest.fixture
def supervisor() -> Iterator[WorkerSupervisor]:
    s = WorkerSupervisor(["protoguard", "score"], 2, metrics_host="127.0.0.1", env={})
    yield s
    s.health.server.server_close()
    shutil.rmtree(s.workdir, ignore_errors=True)


def _children(s: WorkerSupervisor, *returncodes: int | None) -> None:
    s.children = [_Child(i, FakeProcess(code)) for i, code in enumerate(returncodes)]  # type: ignore[arg-type]


def _report(s: WorkerSupervisor, index: int, **checks: bool) -> None:
    StatusFile(s._status_path(index), lambda: (all(checks.values()), checks)).beat()


# ---------------------------------------------------------------- StatusFile: the child's side
def test_status_file_holds_pid_wall_time_readiness_and_checks(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "worker-0.json"
    StatusFile(path, lambda: (False, {"model_loaded": True, "partitions_assigned": False})).beat()
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "wall": clock.wall, "ready": False,
                                            "checks": {"model_loaded": True, "partitions_assigned": False}}
    assert os.listdir(tmp_path) == ["worker-0.json"]  # no temporary file left behind


def test_status_file_is_written_at_most_once_a_second(tmp_path: Path, clock: Clock) -> None:
    calls: list[int] = []

    def ready() -> tuple[bool, dict[str, bool]]:
        calls.append(1)
        return len(calls) > 1, {"n": len(calls) > 1}

    status = StatusFile(tmp_path / "s.json", ready)
    status.beat()
    clock.advance(0.99)
    status.beat()
    assert len(calls) == 1 and json.loads(status.path.read_text())["ready"] is False
    clock.advance(0.01)
    status.beat()
    assert len(calls) == 2 and json.loads(status.path.read_text())["ready"] is True


def test_status_file_is_replaced_never_rewritten_in_place(tmp_path: Path, clock: Clock) -> None:
    """A reader holding the old file keeps reading the whole old content (a new inode takes the name)."""
    path = tmp_path / "s.json"
    states = iter([(False, {"a": False}), (True, {"a": True})])
    status = StatusFile(path, lambda: next(states))
    status.beat()
    with path.open() as reader:
        clock.advance(1.0)
        status.beat()
        assert json.loads(reader.read())["ready"] is False
    assert json.loads(path.read_text())["ready"] is True


def test_stopping_removes_the_status_file_and_tolerates_it_gone(tmp_path: Path, clock: Clock) -> None:
    status = StatusFile(tmp_path / "s.json", lambda: (True, {}))
    status.beat()
    status.stop()
    assert not status.path.exists()
    status.stop()


# ---------------------------------------------------------------- WorkerSupervisor: the parent's aggregation
def test_ready_when_every_child_serves_a_model_and_one_holds_partitions(supervisor: WorkerSupervisor, clock: Clock) -> None:
    _children(supervisor, None, None)
    _report(supervisor, 0, model_loaded=True, partitions_assigned=True)
    _report(supervisor, 1, model_loaded=True, partitions_assigned=False)  # more members than partitions
    assert supervisor.readiness() == (True, {"workers_alive": True, "model_loaded": True, "partitions_assigned": True})


@pytest.mark.parametrize(("returncodes", "reports", "failing"), [
    ((None, None), [{"model_loaded": True, "partitions_assigned": True}, {"model_loaded": False}], "model_loaded"),
    ((None, None), [{"model_loaded": True, "partitions_assigned": True}, None], "model_loaded"),  # no status yet
    ((None, None), [{"model_loaded": True}, {"model_loaded": True}], "partitions_assigned"),
    ((None, 1), [{"model_loaded": True, "partitions_assigned": True}] * 2, "workers_alive"),  # one died
])
def test_not_ready_names_the_failing_check(supervisor: WorkerSupervisor, clock: Clock, returncodes: tuple[Any, ...],
                                           reports: list[dict[str, bool] | None], failing: str) -> None:
    _children(supervisor, *returncodes)
    for index, checks in enumerate(reports):
        if checks is not None:
            _report(supervisor, index, **checks)
    ok, checks = supervisor.readiness()
    assert not ok and [name for name, passed in checks.items() if not passed] == [failing]


def test_alive_while_every_child_runs_and_its_status_is_fresh(supervisor: WorkerSupervisor, clock: Clock) -> None:
    _children(supervisor, None, None)
    _report(supervisor, 0, model_loaded=True)
    clock.advance(30.0)
    _report(supervisor, 1, model_loaded=True)
    assert supervisor.liveness() == (True, {"workers": 2, "workers_alive": 2, "oldest_status_s": 30.0})
    clock.advance(31.0)  # child 0 has not written for 61 s: stalled
    ok, details = supervisor.liveness()
    assert not ok and details["oldest_status_s"] == 61.0


def test_a_dead_or_silent_child_fails_liveness_and_one_that_finished_by_itself_does_not(
        supervisor: WorkerSupervisor, clock: Clock) -> None:
    _children(supervisor, None, 1)
    _report(supervisor, 0, model_loaded=True)
    _report(supervisor, 1, model_loaded=True)
    assert supervisor.liveness()[0] is False and supervisor.liveness()[1]["workers_alive"] == 1
    _children(supervisor, None, None)
    supervisor._status_path(1).unlink()  # child 1 has not written its status yet
    assert supervisor.liveness()[0] is True  # starting (torch, the model): a grace of 60 s
    clock.advance(61.0)
    _report(supervisor, 0, model_loaded=True)
    assert supervisor.liveness()[0] is False  # still nothing from child 1: stalled
    _children(supervisor, None, 0)
    supervisor.children[1].done = True  # exited 0 (--exit-when-idle-s) and removed its status
    assert supervisor.liveness() == (True, {"workers": 2, "workers_alive": 2, "oldest_status_s": 0.0})


def test_the_supervisor_serves_its_children_readiness_and_liveness_over_http(supervisor: WorkerSupervisor,
                                                                            clock: Clock) -> None:
    _children(supervisor, None)
    _report(supervisor, 0, model_loaded=True, partitions_assigned=False)
    supervisor.health.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", supervisor.health.port, timeout=5)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        assert response.status == 503 and json.loads(response.read())["partitions_assigned"] is False
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["workers"] == 1  # children's, not its own loop's
        conn.close()
    finally:
        supervisor.health.stop()
