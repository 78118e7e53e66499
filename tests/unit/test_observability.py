"""stream/observability.py: HealthServer on 127.0.0.1 (any free port) answering /healthz from the loop's
heartbeat, /readyz 200 or 503 from its readiness callable, /metrics from its registry; ScorerMetrics'
served-model gauge."""
from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from protoguard.stream.observability import HealthServer, ScorerMetrics


class Readiness:
    def __init__(self) -> None:
        self.ok, self.checks = False, {"model_loaded": False, "partitions_assigned": True}

    def __call__(self) -> tuple[bool, dict[str, bool]]:
        return self.ok, dict(self.checks)


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, Readiness, CollectorRegistry]]:
    registry, ready = CollectorRegistry(), Readiness()
    server = HealthServer(registry, ready, port=0, host="127.0.0.1")
    server.start()
    yield server, ready, registry
    server.stop()


def _get(server: HealthServer, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def test_port_zero_binds_a_free_port(served: tuple[HealthServer, Readiness, CollectorRegistry]) -> None:
    server, _, _ = served
    assert server.port > 0


def test_readyz_follows_the_readiness_callable_at_every_request(
        served: tuple[HealthServer, Readiness, CollectorRegistry]) -> None:
    server, ready, _ = served
    status, ctype, body = _get(server, "/readyz")
    assert (status, ctype) == (503, "application/json")
    assert json.loads(body) == {"ready": False, "model_loaded": False, "partitions_assigned": True}
    ready.ok, ready.checks["model_loaded"] = True, True
    status, _, body = _get(server, "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "model_loaded": True, "partitions_assigned": True}


def test_healthz_is_alive_while_the_loop_beats_and_503_once_it_stalls() -> None:
    server = HealthServer(CollectorRegistry(), lambda: (True, {}), host="127.0.0.1", max_loop_age_s=30.0)
    server.start()
    try:
        status, _, body = _get(server, "/healthz")
        assert status == 200 and json.loads(body)["alive"] is True
        server.last_loop = time.monotonic() - 31.0  # the loop has not beaten for 31 s
        status, _, body = _get(server, "/healthz")
        details = json.loads(body)
        assert status == 503 and details["alive"] is False and details["last_loop_age_s"] >= 31.0
        server.beat()
        assert _get(server, "/healthz")[0] == 200
    finally:
        server.stop()


def test_healthz_asks_a_replaced_liveness(served: tuple[HealthServer, Readiness, CollectorRegistry]) -> None:
    server, _, _ = served
    server.liveness = lambda: (False, {"workers": 3, "oldest_status_s": 75.0})  # as a supervisor does
    status, _, body = _get(server, "/healthz")
    assert status == 503 and json.loads(body) == {"alive": False, "workers": 3, "oldest_status_s": 75.0}


def test_metrics_serves_the_registry_in_prometheus_text_format(
        served: tuple[HealthServer, Readiness, CollectorRegistry]) -> None:
    server, _, registry = served
    Counter("pg_test_events_total", "test", registry=registry).inc(3)
    status, ctype, body = _get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "pg_test_events_total 3.0" in body.decode().splitlines()


def test_unknown_paths_are_404(served: tuple[HealthServer, Readiness, CollectorRegistry]) -> None:
    server, _, _ = served
    assert _get(server, "/")[0] == 404 and _get(server, "/metrics/extra")[0] == 404


def test_a_new_served_model_zeroes_the_previous_versions_series() -> None:
    metrics = ScorerMetrics()
    info = "protoguard_model_info"
    metrics.set_model("v1", "mnp")
    assert metrics.registry.get_sample_value(info, {"version": "v1", "detector": "mnp"}) == 1.0
    metrics.set_model("v2", "hgad")
    assert metrics.registry.get_sample_value(info, {"version": "v1", "detector": "mnp"}) == 0.0
    assert metrics.registry.get_sample_value(info, {"version": "v2", "detector": "hgad"}) == 1.0
