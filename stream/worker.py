"""ScoringWorker: poll -> decode -> score -> alerts + dead letters -> Redis -> await acks -> commit.

Delivery: at least once from ``events`` to ``alerts``. Offsets of a batch are committed only
after every alert and dead letter of that batch was acknowledged by the broker (``acks=all``,
idempotent producer) and the batch's features reached Redis; a crash before the commit
re-delivers the batch, and the re-scored events get the same deterministic ``alert_id``.
A new model is picked up between batches only, so a batch is scored by exactly one version,
and that version is in every alert it produces.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ..schemas.errors import ProtoguardError
from ..schemas.settings import KafkaSettings, StreamSettings
from ..trainer.store import FeatureStore, TrafficReservoir
from .alerting import build_alerts
from .batching import BatchPolicy
from .consumer_loop import ACK_TIMEOUT_S, ConsumerLoop, batch_offsets, commit_offsets, send_dead_letter, unacknowledged
from .decode import DecodedBatch, decode_batch
from .observability import HealthServer, ScorerMetrics
from .reload import ModelWatcher
from .scoring import score_batch

__all__ = ["BatchOutcome", "DeliveryError", "ScoringWorker"]

log = logging.getLogger(__name__)

#: How long to wait for the broker to acknowledge a batch's sends before giving up on the batch
#: (it is then re-delivered after restart); well under max_poll_interval_ms.


class DeliveryError(ProtoguardError):
    """Alerts or dead letters of a batch were not acknowledged; its offsets are not committed."""


@dataclass
class BatchOutcome:
    """What one micro-batch did (returned for tests and metrics)."""

    n_records: int = 0
    n_scored: int = 0
    n_dead: int = 0
    n_alerts: int = 0
    model_version: str | None = None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerStores:
    """The Redis-side collaborators that travel together."""

    client: redis.Redis
    features: FeatureStore
    reservoir: TrafficReservoir


class ScoringWorker(ConsumerLoop):
    """One member of the scorer consumer group (clients are built by the caller and passed in)."""

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer, *, watcher: ModelWatcher,
                 stores: WorkerStores, kafka: KafkaSettings, stream: StreamSettings,
                 metrics: ScorerMetrics | None = None, random_state: int | None = None) -> None:
        self.consumer = consumer
        self.producer = producer
        self.watcher = watcher
        self.stores = stores
        self.kafka = kafka
        self.stream = stream
        self.policy = BatchPolicy(stream.max_batch, stream.max_wait_ms)
        self.metrics = metrics or ScorerMetrics()
        self.health: HealthServer | None = None
        self._rng = np.random.default_rng(random_state)
        super().__init__()

    # ---------------------------------------------------------------- lifecycle
    def readiness(self) -> tuple[bool, dict[str, bool]]:
        try:
            redis_ok = bool(self.stores.client.ping())
        except redis.RedisError:
            redis_ok = False
        checks = {"partitions_assigned": bool(self.consumer.assignment()), "model_loaded": self.watcher.model is not None,
                  "redis_reachable": redis_ok}
        return all(checks.values()), checks

    def start_health_server(self) -> int:
        self.health = HealthServer(self.metrics, self.readiness, port=self.stream.metrics_port)
        self.health.start()
        return self.health.port

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Loop until stopped (signal, ``request_stop`` or ``until()`` true), then shut down cleanly."""
        self.watcher.start()
        try:
            while not self._stopping and not (until is not None and until()):
                if self.step() is None:
                    time.sleep(0.2)  # nothing to serve yet: do not consume (offsets stay where they are)
        finally:
            self.close()

    def step(self) -> BatchOutcome | None:
        """One turn of the loop: heartbeat, pick up a promoted model, then one batch (None: no model yet).

        Callers that drive the worker themselves (the demo) use this, so a promotion is picked up
        and counted exactly as in ``run``.
        """
        if self.health is not None:
            self.health.beat()
        if self.watcher.refresh():
            model = self.watcher.model
            assert model is not None
            self.metrics.reloads.inc()
            self.metrics.set_model(model.version, model.manifest.detector)
        if self.watcher.model is None:
            return None
        return self.process_one_batch()

    def close(self) -> None:
        try:
            self.close_clients(ACK_TIMEOUT_S)
        finally:
            self.watcher.close()
            if self.health is not None:
                self.health.stop()

    # ---------------------------------------------------------------- one batch
    def _poll_batch(self) -> list[Any]:
        records: list[Any] = []
        started = time.monotonic()
        while True:
            elapsed_ms = (time.monotonic() - started) * 1000
            if records and self.policy.is_full(len(records), elapsed_ms):
                return records
            if not records and elapsed_ms >= self.policy.max_wait_ms:
                return records
            max_records, timeout_ms = self.policy.poll_budget(len(records), elapsed_ms)
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
            for part in polled.values():
                records.extend(part)
            if self._stopping:
                return records

    def process_one_batch(self) -> BatchOutcome:
        records = self._poll_batch()
        model = self.watcher.model
        outcome = BatchOutcome(n_records=len(records), model_version=model.version if model else None)
        if not records or model is None:
            return outcome
        self._saw_records()
        started = time.monotonic()
        manifest = model.manifest
        decoded = decode_batch([r.value for r in records], manifest.feature_names)
        scored = score_batch(model.detector, manifest, decoded.X, decoded.kinds, n_top=self.stream.n_top_features)
        alerts = build_alerts(decoded, scored, model_version=model.version, feature_names=manifest.feature_names)

        futures = []
        headers = [("model_version", model.version.encode())]
        for key, value, alert in alerts:
            futures.append(self.producer.send(self.kafka.alerts_topic, key=key, value=value,
                                              headers=headers + [("event_id", alert.event_id.encode())]))
        futures += self._send_dead_letters(records, decoded)

        pipe = self.stores.client.pipeline(transaction=False)
        self.stores.features.queue_write(pipe, decoded.event_ids, decoded.X)
        self.stores.reservoir.queue_offer(pipe, decoded.event_ids, decoded.X, self._rng)
        pipe.execute()

        failed = unacknowledged(self.producer, futures)
        if failed:
            raise DeliveryError(f"{len(failed)} of {len(futures)} sends of the batch were not acknowledged "
                                f"({failed[0].exception!r}); offsets not committed, the batch will be re-delivered")

        offsets = batch_offsets(records)
        commit_offsets(self.consumer, offsets)

        done = time.monotonic()
        self._record_metrics(records, decoded, len(alerts), done - started)
        outcome.n_scored, outcome.n_dead, outcome.n_alerts, outcome.offsets = (
            len(decoded), len(decoded.rejects), len(alerts), offsets)
        return outcome

    def _send_dead_letters(self, records: list[Any], decoded: DecodedBatch) -> list[Any]:
        return [send_dead_letter(self.producer, self.kafka.dlq_topic, records[r.index], stage=r.stage,
                                 error_class=r.error_class, message=r.message) for r in decoded.rejects]

    def _record_metrics(self, records: list[Any], decoded: DecodedBatch, n_alerts: int, seconds: float) -> None:
        m = self.metrics
        m.events.labels(outcome="scored").inc(len(decoded))
        m.events.labels(outcome="dead_letter").inc(len(decoded.rejects))
        m.alerts.inc(n_alerts)
        m.batch_size.observe(len(records))
        m.batch_seconds.observe(seconds)
        now_ms = time.time() * 1000
        ages = (now_ms - np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))) / 1000
        for q in np.quantile(ages, (0.5, 0.99)):  # two samples per batch keep the histogram cheap
            m.event_latency.observe(max(0.0, float(q)))
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                try:
                    m.lag.labels(partition=str(tp.partition)).set(max(0, high - self.consumer.position(tp, timeout_ms=0)))
                except Exception:  # position unknown right after a rebalance; skip this sample
                    pass
