"""Micro-batch policy: a batch closes when it holds ``max_batch`` records or ``max_wait_ms`` passed. Pure."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchPolicy"]


@dataclass(frozen=True)
class BatchPolicy:
    """Bounds of one micro-batch.

    Larger batches amortise the forward pass and the Redis/Kafka round trips; the wait bound caps
    the latency an event can spend waiting for company when traffic is light.

    >>> policy = BatchPolicy(max_batch=100, max_wait_ms=20)
    >>> policy.is_full(100, 0.0), policy.is_full(5, 25.0), policy.is_full(5, 3.0)
    (True, True, False)
    >>> policy.poll_budget(40, 5.0)
    (60, 15)
    """

    max_batch: int
    max_wait_ms: int

    def is_full(self, n_records: int, elapsed_ms: float) -> bool:
        return n_records >= self.max_batch or elapsed_ms >= self.max_wait_ms

    def poll_budget(self, n_records: int, elapsed_ms: float) -> tuple[int, int]:
        """(max_records, timeout_ms) for the next poll so the batch bounds are not overshot."""
        return self.max_batch - n_records, max(0, int(self.max_wait_ms - elapsed_ms))
