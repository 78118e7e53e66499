"""The README's first command, shrunk: `protoguard demo` end to end on its own stack, report included."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from protoguard.deploy.stack import free_port

pytestmark = pytest.mark.integration


@pytest.mark.slow  # starts a stack of its own and retrains twice
def test_demo_runs_the_label_loop_and_writes_the_report(tmp_path) -> None:
    report = tmp_path / "report"
    env = {**os.environ, "PROTOGUARD_STACK__RUN_DIR": str(tmp_path / "run"),
           "PROTOGUARD_STACK__KAFKA_PORT": str(free_port()), "PROTOGUARD_STACK__CONTROLLER_PORT": str(free_port()),
           "PROTOGUARD_STACK__REDIS_PORT": str(free_port())}
    cmd = [sys.executable, "-m", "protoguard.cli.main", "demo", "--rounds", "2", "--events-per-round", "2000",
           "--n-eval", "2000", "--report", str(report), "--seed", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = orjson.loads((report / "summary.json").read_bytes())
    assert summary["n_scored"] == summary["n_streamed"] == 4000
    assert summary["n_dead"] == 20  # the malformed messages of round 1, each dead-lettered
    assert summary["n_promoted"] + summary["n_rejected"] == 2  # one retrain per round, each decided
    # ten labelled attacks already beat the unsupervised reference by a wide margin
    assert summary["auc_pr_before"] > 2 * summary["iforest_auc_pr"]
    html = (report / "index.html").read_text()
    for png in ("quality.png", "alerts.png", "weights.png", "map.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG" and png in html
