"""Which rows of a batch a uniform reservoir keeps (Vitter's algorithm R), decided by skip counting. Pure.

Algorithm R keeps the item at stream position ``t`` (0-based) with probability ``k / (t + 1)``
once the reservoir of ``k`` slots is full, in a slot chosen uniformly. Deciding that row by row
costs one random draw per event; at millions of events only a few rows per batch are kept, so we
draw the *gaps* between kept rows instead.

The keep probability falls with ``t``, so the gap is not geometric. We draw it from a geometric
distribution at the highest probability still possible (``p0 = k / (t0 + 1)`` at the current
position ``t0``) and accept the proposed position ``t`` with probability ``p(t) / p0``: thinning
a Bernoulli process whose rate only falls gives exactly the thinned rates, and the work is
proportional to the number of rows kept, not to the batch size. After each proposal the bound
is tightened to the new position (the geometric distribution is memoryless, so restarting there
is exact).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["reservoir_picks"]


def reservoir_picks(seen: int, n_rows: int, capacity: int,
                    rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(row indices kept, their slots) for the rows at stream positions ``seen .. seen + n_rows - 1``.

    Examples
    --------
    >>> rows, slots = reservoir_picks(0, 5, 10, np.random.default_rng(0))   # filling: all kept, in order
    >>> rows.tolist(), slots.tolist()
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    >>> rows, slots = reservoir_picks(10**9, 4096, 100, np.random.default_rng(0))   # late: almost none
    >>> len(rows) <= 2
    True
    """
    if seen < 0 or n_rows < 0 or capacity < 1:
        raise ValueError("seen and n_rows must be >= 0 and capacity >= 1")
    end = seen + n_rows
    n_fill = max(0, min(end, capacity) - seen)
    rows = list(range(n_fill))
    slots = list(range(seen, seen + n_fill))
    t = seen + n_fill  # the next position to decide (all positions before it are decided)
    while t < end:
        p0 = capacity / (t + 1)
        if p0 >= 1.0:  # cannot happen after the fill phase; kept for safety of the arithmetic
            candidate = t
        else:
            # numpy's geometric counts trials to the first success (>= 1); the first candidate is t + gap - 1.
            candidate = t + int(rng.geometric(p0)) - 1
        if candidate >= end:
            break
        if rng.random() * (candidate + 1) < t + 1:  # accept with p(candidate) / p0 = (t + 1) / (candidate + 1)
            rows.append(candidate - seen)
            slots.append(int(rng.integers(capacity)))
        t = candidate + 1
    return np.asarray(rows, dtype=np.int64), np.asarray(slots, dtype=np.int64)
