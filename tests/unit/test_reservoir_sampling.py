"""The client-side reservoir decision: algorithm R's inclusion probabilities, bounded size, skip counting."""
from __future__ import annotations

import numpy as np
import pytest

from protoguard.trainer.reservoir_sampling import reservoir_picks


def _run_stream(n_items: int, capacity: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Simulate the shared pool: slot -> the stream position it holds, batches of ``batch`` items."""
    pool = np.full(capacity, -1, dtype=np.int64)
    for seen in range(0, n_items, batch):
        rows, slots = reservoir_picks(seen, min(batch, n_items - seen), capacity, rng)
        pool[slots] = seen + rows  # within a batch, later rows overwrite earlier ones (algorithm R's order)
    return pool


def test_every_item_is_kept_with_probability_capacity_over_n() -> None:
    rng = np.random.default_rng(0)
    n_items, capacity, trials = 2000, 50, 1500
    counts = np.zeros(n_items)
    for _ in range(trials):
        counts[_run_stream(n_items, capacity, 97, rng)] += 1
    expected = trials * capacity / n_items  # 37.5 per item
    # Early, middle and late items alike: the means of each fifth of the stream match expected.
    fifths = counts.reshape(5, -1).mean(axis=1)
    assert np.all(np.abs(fifths - expected) < 0.05 * expected), fifths
    # And the spread per item is binomial-like, not a few items always kept.
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 1.2 * n_items


def test_pool_never_exceeds_capacity_and_fills_in_order() -> None:
    rng = np.random.default_rng(1)
    rows, slots = reservoir_picks(0, 30, 10, rng)
    assert rows[:10].tolist() == list(range(10)) and slots[:10].tolist() == list(range(10))
    assert np.all((slots >= 0) & (slots < 10))
    pool = _run_stream(10_000, 64, 512, rng)
    assert len(pool) == 64 and np.all(pool >= 0) and len(set(pool.tolist())) == 64


def test_work_is_proportional_to_rows_kept_not_batch_size() -> None:
    rng = np.random.default_rng(2)
    rows, _ = reservoir_picks(10**9, 1_000_000, 1000, rng)  # expected ~1 kept
    assert len(rows) < 10
    kept = [len(reservoir_picks(10**6, 4096, 20_000, rng)[0]) for _ in range(200)]
    assert abs(np.mean(kept) - 4096 * 20_000 / 10**6) < 5  # about 82 of 4096


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        reservoir_picks(-1, 10, 10, np.random.default_rng(0))
    with pytest.raises(ValueError):
        reservoir_picks(0, 10, 0, np.random.default_rng(0))
