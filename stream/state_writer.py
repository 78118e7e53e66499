"""Feature rows and reservoir offers written to Redis by a background thread, off the scoring path.

Storing every scored event's features (so that a later label can be joined to them) costs Redis a
hash field per event. Done inline, the scorer's thread would wait for that round trip on every
batch; here the scorer hands the batch's ``(event_ids, X)`` to a bounded queue and carries on.
The thread's work is mostly socket I/O (which releases the GIL) and Redis's own work runs in the
Redis process, so it overlaps with the next batch's decoding and scoring.

What may be lost, on purpose: while Redis is away (or slower than the stream for longer than the
queue holds), rows are skipped and counted in ``protoguard_redis_skipped_rows_total``; scoring,
alerting and commits never wait on Redis. A batch's features are written in the same pipeline as
its reservoir counter increment, so a reader that sees the counter (``pg:reservoir:seen``) past a
batch also finds that batch's features.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import redis

from ..trainer.store import FeatureStore, TrafficReservoir
from .backoff import Backoff

__all__ = ["StateWriter"]

log = logging.getLogger(__name__)

_Item = tuple[list[str], npt.NDArray[np.float32]] | None


class StateWriter:
    """One writer thread per scorer process; ``offer`` never blocks longer than ``put_timeout_s``."""

    def __init__(self, client: redis.Redis, features: FeatureStore, reservoir: TrafficReservoir, *,
                 rng: np.random.Generator, on_skipped: Callable[[int], None], max_batches: int = 8,
                 put_timeout_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        self.client = client
        self.features = features
        self.reservoir = reservoir
        self.rng = rng
        self.on_skipped = on_skipped
        self.put_timeout_s = put_timeout_s
        self.backoff = Backoff(initial_s=0.5, max_s=max_backoff_s)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max_batches)
        self._thread = threading.Thread(target=self._run, name="protoguard-state-writer", daemon=True)
        self._thread.start()

    def offer(self, event_ids: Sequence[str], X: npt.NDArray[np.float32]) -> bool:
        """Queue a batch's rows; False (rows skipped and counted) when Redis is away or far behind."""
        if not len(event_ids):
            return True
        if not self.backoff.ready():
            self.on_skipped(len(event_ids))
            return False
        try:
            self._queue.put((list(event_ids), X), timeout=self.put_timeout_s)
        except queue.Full:
            self.on_skipped(len(event_ids))
            log.warning("Redis writes are behind the stream: %d rows skipped", len(event_ids))
            return False
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything offered so far was written (or skipped); False on timeout."""
        done = threading.Event()
        with self._queue.all_tasks_done:
            if not self._queue.unfinished_tasks:
                return True
        waiter = threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True)
        waiter.start()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (bounded by ``timeout_s``), then stop the thread."""
        self.flush(timeout_s)
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            return
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            finally:
                self._queue.task_done()

    def _write(self, event_ids: list[str], X: npt.NDArray[np.float32]) -> None:
        if not self.backoff.ready():
            self.on_skipped(len(event_ids))
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            self.features.queue_write(pipe, event_ids, X)
            pipe.execute()
            # After the features: a reader that sees the reservoir counter past this batch finds them.
            pipe = self.client.pipeline(transaction=False)
            if self.reservoir.queue_offer(pipe, event_ids, X, self.rng):
                pipe.execute()
        except redis.RedisError as exc:
            delay = self.backoff.failed()
            self.on_skipped(len(event_ids))
            log.warning("Redis write failed (%r): %d scored rows not stored; next try in %.1f s", exc, len(event_ids),
                        delay)
            return
        if self.backoff.succeeded():
            log.info("Redis is back: storing features again")
