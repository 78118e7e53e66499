"""stream/backoff.py: the capped doubling, the jitter band, reset on success and the retry clock."""
from __future__ import annotations

import time

from protoguard.stream.backoff import Backoff


def test_delays_double_from_the_initial_delay_up_to_the_cap() -> None:
    b = Backoff(initial_s=0.5, max_s=3.0, jitter=0.0)
    assert [b.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert b.failures == 6


def test_defaults_start_at_half_a_second_and_cap_at_thirty() -> None:
    b = Backoff(jitter=0.0)
    delays = [b.failed() for _ in range(12)]
    assert delays[:3] == [0.5, 1.0, 2.0] and delays[-1] == 30.0 and max(delays) == 30.0


def test_jitter_stays_within_its_band_and_actually_spreads_the_delays() -> None:
    delays = []
    for _ in range(200):
        b = Backoff(initial_s=1.0, max_s=1.0, jitter=0.2)
        delays.append(b.failed())
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.1  # scorers of a group do not all retry at the same instant


def test_success_resets_the_doubling_and_reports_only_a_recovery() -> None:
    b = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0)
    assert b.succeeded() is False  # nothing had failed
    b.failed(), b.failed()
    assert b.succeeded() is True and b.failures == 0
    assert b.failed() == 1.0  # starts again from the initial delay


def test_ready_only_once_the_wait_after_the_last_failure_is_over() -> None:
    b = Backoff(initial_s=0.2, max_s=0.2, jitter=0.0)
    assert b.ready()  # never failed
    b.failed()
    assert not b.ready()
    time.sleep(0.25)
    assert b.ready()
    b.failed()
    assert not b.ready()
    b.succeeded()
    assert b.ready()  # a success ends the wait at once

