"""Micro-batch policy: how long to wait for traffic, and when a gathered batch closes. Pure."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchPolicy"]


@dataclass(frozen=True)
class BatchPolicy:
    """Bounds of one micro-batch.

    The scorer waits up to ``idle_poll_ms`` for the first records (a long wait costs nothing when
    idle and keeps an idle scorer off the CPU), then gathers what is already fetched until the batch
    holds ``max_batch`` records or ``max_wait_ms`` passed since its first record. Larger batches
    amortise the forward pass and the Redis/Kafka round trips; the wait bound caps the time spent
    gathering while records keep trickling in.

    >>> policy = BatchPolicy(max_batch=100, max_wait_ms=20)
    >>> policy.is_full(100, 0.0), policy.is_full(5, 25.0), policy.is_full(5, 3.0)
    (True, True, False)
    """

    max_batch: int
    max_wait_ms: int
    idle_poll_ms: int = 500

    def is_full(self, n_records: int, elapsed_ms: float) -> bool:
        return n_records >= self.max_batch or elapsed_ms >= self.max_wait_ms
