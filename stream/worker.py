"""ScoringWorker: poll -> decode -> score -> alerts + dead letters -> Redis -> await acks -> commit.

Delivery: at least once from ``events`` to ``alerts``. Offsets of a batch are committed only
after every alert and dead letter of that batch was acknowledged by the broker (``acks=all``,
idempotent producer) and the batch's features reached Redis; a crash before the commit
re-delivers the batch, and the re-scored events get the same deterministic ``alert_id``.
A new model is picked up between batches only, so a batch is scored by exactly one version,
and that version is in every alert it produces.
"""
from __future__ import annotations

import base64
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ..schemas.errors import ProtoguardError
from ..schemas.events import DeadLetter
from ..schemas.settings import KafkaSettings, StreamSettings
from ..trainer.store import FeatureStore, TrafficReservoir
from .alerting import build_alerts
from .batching import BatchPolicy
from .decode import DecodedBatch, decode_batch
from .observability import HealthServer, ScorerMetrics
from .reload import ModelWatcher
from .scoring import score_batch

__all__ = ["BatchOutcome", "DeliveryError", "ScoringWorker"]

log = logging.getLogger(__name__)

#: How long to wait for the broker to acknowledge a batch's sends before giving up on the batch
#: (it is then re-delivered after restart); well under max_poll_interval_ms.
_ACK_TIMEOUT_S = 60.0


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


class ScoringWorker:
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
        self._stopping = False
        self._last_records_at = time.monotonic()

    # ---------------------------------------------------------------- lifecycle
    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: finish the in-flight batch, flush, commit, leave the group."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def idle_s(self) -> float:
        """Seconds since the last batch that held records, counted only while partitions are held.

        The clock stays at zero until the group has handed this member partitions (joining, or an
        assignment left empty because the topic's metadata was not visible yet, can take longer than
        the idle limit on a loaded machine); otherwise a batch-style run could exit before it began.
        """
        now = time.monotonic()
        if not self.consumer.assignment():
            self._last_records_at = now
            return 0.0
        return now - self._last_records_at

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
                if self.health is not None:
                    self.health.beat()
                if self.watcher.refresh():
                    model = self.watcher.model
                    assert model is not None
                    self.metrics.reloads.inc()
                    self.metrics.set_model(model.version, model.manifest.detector)
                if self.watcher.model is None:
                    time.sleep(0.2)  # nothing to serve yet: do not consume (offsets stay where they are)
                    continue
                self.process_one_batch()
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.producer.flush(timeout=_ACK_TIMEOUT_S)
            self.producer.close(timeout=_ACK_TIMEOUT_S)
        finally:
            self.consumer.close(autocommit=False)  # leaves the group so partitions move at once
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
        self._last_records_at = time.monotonic()
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

        self.producer.flush(timeout=_ACK_TIMEOUT_S)
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise DeliveryError(f"{len(failed)} of {len(futures)} sends of the batch were not acknowledged "
                                f"({failed[0].exception!r}); offsets not committed, the batch will be re-delivered")

        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
        self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})

        done = time.monotonic()
        self._record_metrics(records, decoded, len(alerts), done - started)
        outcome.n_scored, outcome.n_dead, outcome.n_alerts, outcome.offsets = (
            len(decoded), len(decoded.rejects), len(alerts), offsets)
        return outcome

    def _send_dead_letters(self, records: list[Any], decoded: DecodedBatch) -> list[Any]:
        futures = []
        now = datetime.now(UTC)
        for reject in decoded.rejects:
            rec = records[reject.index]
            letter = DeadLetter(
                original_b64=base64.b64encode(rec.value or b"").decode(), topic=rec.topic, partition=rec.partition,
                offset=rec.offset, stage=reject.stage, error_class=reject.error_class, error_message=reject.message, ts=now,
            )
            log.warning("dead letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reject.message)
            futures.append(self.producer.send(self.kafka.dlq_topic, key=rec.key, value=orjson.dumps(letter.model_dump(mode="json")),
                                              headers=[("stage", reject.stage.encode()),
                                                       ("error_class", reject.error_class.encode())]))
        return futures

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
