"""stream/batching.py: when a micro-batch closes (size bound, wait bound) and the policy's defaults."""
from __future__ import annotations

import dataclasses

import pytest

from protoguard.stream.batching import BatchPolicy


@pytest.mark.parametrize(("n_records", "elapsed_ms", "full"), [
    (0, 0.0, False),
    (99, 19.9, False),     # one record short, just inside the wait
    (100, 0.0, True),      # size bound reached at once
    (250, 0.0, True),      # an over-full fetch is full too
    (1, 20.0, True),       # wait bound is inclusive
    (1, 1e6, True),
])
def test_a_batch_closes_at_the_size_or_the_wait_bound_whichever_comes_first(
        n_records: int, elapsed_ms: float, full: bool) -> None:
    assert BatchPolicy(max_batch=100, max_wait_ms=20).is_full(n_records, elapsed_ms) is full


def test_a_zero_wait_closes_every_batch_at_once_and_a_batch_of_one_closes_on_its_first_record() -> None:
    assert BatchPolicy(max_batch=10_000, max_wait_ms=0).is_full(1, 0.0)
    single = BatchPolicy(max_batch=1, max_wait_ms=60_000)
    assert single.is_full(1, 0.0) and not single.is_full(0, 59_999.0)


def test_the_idle_poll_defaults_to_half_a_second_and_the_policy_is_immutable() -> None:
    policy = BatchPolicy(max_batch=8, max_wait_ms=5)
    assert policy.idle_poll_ms == 500
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_batch = 9  # type: ignore[misc]
