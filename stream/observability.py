"""Prometheus metrics and the /healthz, /readyz endpoints on a side HTTP port (a daemon thread).

Each worker owns its own ``CollectorRegistry`` so that tests can run several in one process.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["HealthServer", "ScorerMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384)


class ScorerMetrics:
    """The scorer's metrics; names follow Prometheus conventions (``_total``, ``_seconds``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._served: tuple[str, str] | None = None
        r = self.registry
        self.events = Counter("protoguard_events_total", "Consumed events by outcome", ["outcome"], registry=r)
        self.alerts = Counter("protoguard_alerts_total", "Alerts published", registry=r)
        self.batch_size = Histogram("protoguard_batch_size", "Records per micro-batch", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("protoguard_batch_seconds", "Wall time to process one micro-batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.event_latency = Histogram("protoguard_event_latency_seconds",
                                       "Event timestamp (producer) to batch committed", buckets=_LATENCY_BUCKETS, registry=r)
        # multiprocess_mode only matters under ``protoguard score --workers N`` (one file per process).
        self.lag = Gauge("protoguard_consumer_lag", "Records behind the high watermark", ["partition"], registry=r,
                         multiprocess_mode="livemax")
        self.model_info = Gauge("protoguard_model_info", "The served model version", ["version", "detector"], registry=r,
                                multiprocess_mode="livemax")
        self.reloads = Counter("protoguard_model_reloads_total", "Model versions picked up", registry=r)
        self.commits = Counter("protoguard_batch_commits_total", "Batch commits by result", ["result"], registry=r)
        self.rejoins = Counter("protoguard_group_rejoins_total",
                               "Assignments after the first one (rebalances, or coming back after an eviction)",
                               registry=r)
        self.consumer_restarts = Counter("protoguard_consumer_restarts_total",
                                         "Consumers replaced after a group join stalled past stream.join_stall_s",
                                         registry=r)
        self.redis_skipped = Counter("protoguard_redis_skipped_rows_total",
                                     "Scored rows whose features and reservoir offer were not stored (Redis away)",
                                     registry=r)
        self.loop_errors = Counter("protoguard_loop_errors_total", "Faults waited out by the loop", ["kind"],
                                   registry=r)
        self.model_load_failures = Counter("protoguard_model_load_failures_total",
                                           "Promoted versions this scorer could not load (it kept its model)",
                                           registry=r)

    def set_model(self, version: str, detector: str) -> None:
        # Zero the previous version's series rather than clear(): clearing is not supported by
        # prometheus-client's multiprocess mode (``score --workers N``).
        if self._served is not None:
            self.model_info.labels(*self._served).set(0)
        self._served = (version, detector)
        self.model_info.labels(version=version, detector=detector).set(1)


class HealthServer:
    """Serves /metrics (``registry``), /healthz (loop alive) and /readyz (``ready()`` true) on ``port`` (0 = any free port)."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, dict[str, bool]]], port: int = 0,
                 max_loop_age_s: float = 60.0, host: str = "0.0.0.0") -> None:
        self.registry = registry
        #: replaced by a supervisor whose liveness is its children's, not its own loop's
        self.liveness: Callable[[], tuple[bool, dict[str, Any]]] = self._loop_liveness
        self.ready = ready
        self.max_loop_age_s = max_loop_age_s
        self.last_loop = time.monotonic()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok, details = outer.liveness()
                    self._send(200 if ok else 503, json.dumps({"alive": ok, **details}).encode())
                elif self.path == "/readyz":
                    ok, checks = outer.ready()
                    self._send(200 if ok else 503, json.dumps({"ready": ok, **checks}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="protoguard-health", daemon=True)

    def _loop_liveness(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_loop
        return age < self.max_loop_age_s, {"last_loop_age_s": round(age, 2)}

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
