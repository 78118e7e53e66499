"""Capped exponential backoff for faults that are waited out (Redis or the broker away). Pure."""
from __future__ import annotations

import random
import time

__all__ = ["Backoff"]


class Backoff:
    """Delays 0.5 s, 1 s, 2 s, ... up to ``max_s`` after consecutive failures, with +-20 % jitter so
    that the scorers of a group do not all retry at the same instant; one success resets it.

    >>> b = Backoff(initial_s=1.0, max_s=4.0, jitter=0.0)
    >>> [b.failed() for _ in range(4)], b.ready(), b.succeeded(), b.ready()
    ([1.0, 2.0, 4.0, 4.0], False, True, True)
    """

    def __init__(self, *, initial_s: float = 0.5, max_s: float = 30.0, jitter: float = 0.2) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.failures = 0
        self._retry_at = 0.0

    def failed(self) -> float:
        """Record a failure; returns how long to wait before the next try."""
        delay = min(self.max_s, self.initial_s * 2 ** self.failures)
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        self.failures += 1
        self._retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> bool:
        """Record a success; returns True when it ends a run of failures (the thing came back)."""
        recovered = self.failures > 0
        self.failures = 0
        self._retry_at = 0.0
        return recovered

    def ready(self) -> bool:
        """Whether the wait after the last failure is over."""
        return time.monotonic() >= self._retry_at
