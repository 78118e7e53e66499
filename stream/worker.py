"""ScoringWorker: poll -> decode -> score -> alerts + dead letters -> Redis -> acks -> commit.

Delivery: at least once from ``events`` to ``alerts``. A batch's offsets are committed only after
every alert and dead letter of that batch was acknowledged by the broker (``acks=all``,
idempotent producer; ``checkpoint.Checkpoint``); a crash or a refused commit re-delivers the
batch, and the re-scored events get the same deterministic ``alert_id``. A new model is picked up
between batches only, so a batch is scored by exactly one version, and that version is in every
alert it produces.

Faults do not end the process. Redis away: the batch is still scored, alerted and committed;
only its feature rows and reservoir offers are skipped (counted in
``protoguard_redis_skipped_rows_total``) and Redis is tried again after a capped backoff. Broker
away: sends are not acknowledged, the consumer is rewound to the batch's start and the loop backs
off. Evicted from the group (a stall past the session timeout): the commit is refused, the batch
is left to the partitions' new owner, and kafka-python rejoins on the next poll (counted in
``protoguard_group_rejoins_total``).
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

from ..schemas.settings import KafkaSettings, StreamSettings
from ..trainer.store import FeatureStore, TrafficReservoir
from .alerting import build_alerts
from .backoff import Backoff
from .batching import BatchPolicy
from .checkpoint import Checkpoint, CommitResult
from .consumer_loop import ConsumerLoop, TRANSIENT_FAULTS, send_dead_letter
from .decode import DecodedBatch, decode_batch
from .observability import HealthServer, ScorerMetrics
from .reload import ModelWatcher
from .scoring import score_batch
from .state_writer import StateWriter

__all__ = ["BatchOutcome", "ScoringWorker", "WorkerStores"]

log = logging.getLogger(__name__)



@dataclass
class BatchOutcome:
    """What one micro-batch did (returned for tests and metrics)."""

    n_records: int = 0
    n_scored: int = 0
    n_dead: int = 0
    n_alerts: int = 0
    model_version: str | None = None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    result: CommitResult | None = None
    state_queued: bool = False


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
                 metrics: ScorerMetrics | None = None, random_state: int | None = None,
                 consumer_factory: Callable[[], KafkaConsumer] | None = None) -> None:
        self.consumer = consumer
        self.producer = producer
        self.watcher = watcher
        self.stores = stores
        self.kafka = kafka
        self.stream = stream
        self.policy = BatchPolicy(stream.max_batch, stream.max_wait_ms, stream.idle_poll_ms)
        self.metrics = metrics or ScorerMetrics()
        self.health: HealthServer | None = None
        self._rng = np.random.default_rng(random_state)
        self.state = StateWriter(stores.client, stores.features, stores.reservoir, rng=self._rng,
                                 on_skipped=self.metrics.redis_skipped.inc, max_backoff_s=stream.max_backoff_s)
        self._loop_backoff = Backoff(initial_s=0.2, max_s=stream.max_backoff_s)
        self._rejoins_seen = 0
        self._load_failures_seen = 0
        self._next_lag_sample = 0.0
        super().__init__(consumer_factory=consumer_factory, join_stall_s=stream.join_stall_s)

    # ---------------------------------------------------------------- lifecycle
    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Ready = holds partitions, serves a model and its last batch reached the broker. Redis is
        reported but does not gate readiness: the scorer keeps scoring and alerting while it is away
        (``redis_writing`` false means feature rows are being skipped)."""
        try:
            redis_ok = bool(self.stores.client.ping())
        except redis.RedisError:
            redis_ok = False
        checks = {"partitions_assigned": self.holds_partitions(), "model_loaded": self.watcher.model is not None,
                  "delivering": self._loop_backoff.failures == 0, "redis_reachable": redis_ok,
                  "redis_writing": self.state.backoff.failures == 0}
        return checks["partitions_assigned"] and checks["model_loaded"] and checks["delivering"], checks

    def start_health_server(self) -> int:
        self.health = HealthServer(self.metrics.registry, self.readiness, port=self.stream.metrics_port,
                                   host=self.stream.metrics_host)
        self.health.start()
        return self.health.port

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Loop until stopped (signal, ``request_stop`` or ``until()`` true), then shut down cleanly.

        Broker and Redis faults are waited out with a capped exponential backoff; the loop only
        ends when asked to.
        """
        self._start_watcher()
        try:
            while not self._stopping and not (until is not None and until()):
                try:
                    started = time.monotonic()
                    outcome = self.step()
                    if outcome is None:
                        time.sleep(0.2)  # nothing to serve yet: do not consume (offsets stay where they are)
                    elif not outcome.n_records and time.monotonic() - started < self.policy.idle_poll_ms / 2000:
                        # kafka-python's poll can return at once with nothing (e.g. while this member
                        # holds no fetchable partition); polling again at once would spin a core.
                        self._sleep(0.05)
                except TRANSIENT_FAULTS as exc:
                    self.metrics.loop_errors.labels(kind=type(exc).__name__).inc()
                    delay = self._loop_backoff.failed()
                    log.warning("scorer loop fault (%r); retrying in %.1f s", exc, delay)
                    self._sleep(delay)
        finally:
            self.close()

    def _start_watcher(self) -> None:
        try:
            self.watcher.start()
        except redis.RedisError as exc:  # Redis is not up yet: the watcher's polling will find the model later
            log.warning("model updates: cannot subscribe yet (%r); polling instead", exc)

    def _on_wait_tick(self) -> None:
        if self.health is not None:  # a backing-off scorer is alive, not hung
            self.health.beat()

    def step(self) -> BatchOutcome | None:
        """One turn of the loop: heartbeat, pick up a promoted model, then one batch (None: no model yet).

        Callers that drive the worker themselves (the demo) use this, so a promotion is picked up
        and counted exactly as in ``run``.
        """
        if self.health is not None:
            self.health.beat()
        self._refresh_model()
        if self.watcher.model is None:
            return None
        outcome = self.process_one_batch()
        self._count_rejoins()
        if self.restart_consumer_if_stalled():
            self.metrics.consumer_restarts.inc()
        return outcome

    def _refresh_model(self) -> None:
        try:
            changed = self.watcher.refresh()
        except redis.RedisError as exc:  # keep serving the cached model while the registry is away
            self.metrics.loop_errors.labels(kind=type(exc).__name__).inc()
            log.debug("model registry unreachable (%r); serving the cached model", exc)
            return
        failures = self.watcher.n_failures
        if failures > self._load_failures_seen:
            self.metrics.model_load_failures.inc(failures - self._load_failures_seen)
            self._load_failures_seen = failures
        if changed:
            model = self.watcher.model
            assert model is not None
            self.metrics.reloads.inc()
            self.metrics.set_model(model.version, model.manifest.detector)

    def _count_rejoins(self) -> None:
        rejoins = self.membership.n_rejoins
        if rejoins > self._rejoins_seen:
            self.metrics.rejoins.inc(rejoins - self._rejoins_seen)
            self._rejoins_seen = rejoins

    def close(self) -> None:
        try:
            self.state.close()
            self.close_clients()
        finally:
            self.watcher.close()
            if self.health is not None:
                self.health.stop()

    # ---------------------------------------------------------------- one batch
    def _poll_batch(self, checkpoint: Checkpoint) -> list[Any]:
        """Gather one micro-batch greedily: wait (up to ``idle_poll_ms``) for the first records, then
        take whatever else is already fetched, until ``max_batch`` records or ``max_wait_ms``.

        Under light load a batch closes as soon as nothing more is waiting, so an event does not sit
        out ``max_wait_ms`` for company; under heavy load records pile up while the previous batch is
        scored and batches grow by themselves.
        """
        records: list[Any] = []
        policy = self.policy
        timeout_ms, started = policy.idle_poll_ms, 0.0
        while True:
            wall, cpu = time.monotonic(), time.process_time()
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=policy.max_batch - len(records))
            if not polled:
                if not records:
                    self.note_empty_poll(time.monotonic() - wall, time.process_time() - cpu)
                return records
            if not records:
                started = time.monotonic()
            checkpoint.extend(polled)
            for part in polled.values():
                records.extend(part)
            if self._stopping or policy.is_full(len(records), (time.monotonic() - started) * 1000):
                return records
            timeout_ms = 0

    def process_one_batch(self) -> BatchOutcome:
        checkpoint = self.new_checkpoint()
        records = self._poll_batch(checkpoint)
        if records:
            # A promotion announced while we waited in poll is picked up before these records are
            # scored: events produced after a promotion was published are scored by the new model.
            # Without a notification this costs one non-blocking socket check.
            self._refresh_model()
        model = self.watcher.model
        outcome = BatchOutcome(n_records=len(records), model_version=model.version if model else None)
        if not records or model is None:
            if records:  # no model to score with: hand the records back
                checkpoint.rewind()
            return outcome
        self._saw_records()
        started = time.monotonic()
        manifest = model.manifest
        decoded = decode_batch([r.value for r in records], manifest.feature_names)
        scored = score_batch(model.detector, manifest, decoded.X, decoded.kinds, n_top=self.stream.n_top_features,
                             out_of_range_spans=self.stream.out_of_range_spans)
        alerts = build_alerts(decoded, scored, model_version=model.version, feature_names=manifest.feature_names)

        version_header = ("model_version", model.version.encode())
        for key, value, alert in alerts:
            checkpoint.send(self.kafka.alerts_topic, key=key, value=value,
                            headers=[version_header, ("event_id", alert.event_id.encode())])
        self._send_dead_letters(checkpoint, records, decoded)
        outcome.state_queued = self._write_state(decoded)
        outcome.result = result = checkpoint.commit(rebalancing=self.membership.waiting_s() > 0)
        self.metrics.commits.labels(result=result.value).inc()
        if result in (CommitResult.COMMITTED, CommitResult.REBALANCED):  # scored and delivered either way
            self._loop_backoff.succeeded()
            # Counted as work done: a batch whose offsets were left to the next owner may be scored
            # again there, and is counted again (the outcome below counts committed batches only).
            self._record_metrics(checkpoint, records, decoded, len(alerts), time.monotonic() - started)
        if result is CommitResult.COMMITTED:
            outcome.n_scored, outcome.n_dead, outcome.n_alerts = len(decoded), len(decoded.rejects), len(alerts)
            outcome.offsets = checkpoint.offsets
        elif result in (CommitResult.UNACKNOWLEDGED, CommitResult.COMMIT_FAILED):
            self._sleep(self._loop_backoff.failed())  # the broker is struggling: do not spin on it
        return outcome

    def _send_dead_letters(self, checkpoint: Checkpoint, records: list[Any], decoded: DecodedBatch) -> None:
        for r in decoded.rejects:
            send_dead_letter(checkpoint, self.kafka.dlq_topic, records[r.index], stage=r.stage,
                             error_class=r.error_class, message=r.message,
                             max_original_bytes=self.stream.dead_letter_max_bytes)

    def _write_state(self, decoded: DecodedBatch) -> bool:
        """Hand the batch's feature rows and reservoir offer to the Redis writer thread (never blocks
        the commit of what was scored and alerted: see ``state_writer``)."""
        return self.state.offer(decoded.event_ids, decoded.X)

    def flush_state(self, timeout_s: float = 30.0) -> bool:
        """Wait until every scored batch's features are in Redis (or were skipped)."""
        return self.state.flush(timeout_s)

    def _record_metrics(self, checkpoint: Checkpoint, records: list[Any], decoded: DecodedBatch, n_alerts: int,
                        seconds: float) -> None:
        m = self.metrics
        m.events.labels(outcome="scored").inc(len(decoded))
        m.events.labels(outcome="dead_letter").inc(len(decoded.rejects))
        m.alerts.inc(n_alerts)
        m.batch_size.observe(len(records))
        m.batch_seconds.observe(seconds)
        # Two samples per batch keep this off the per-record path: the oldest and the newest record.
        now_ms = time.time() * 1000
        for stamp in (records[0].timestamp, records[-1].timestamp):
            m.event_latency.observe(max(0.0, (now_ms - stamp) / 1000))
        now = time.monotonic()
        if now >= self._next_lag_sample:
            self._next_lag_sample = now + 1.0
            for tp, after in checkpoint.offsets.items():
                high = self.consumer.highwater(tp)
                if high is not None:
                    m.lag.labels(partition=str(tp.partition)).set(max(0, high - after))
