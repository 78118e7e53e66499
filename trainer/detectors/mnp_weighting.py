"""How strongly MNP down-weights unlabelled rows that look least like any normal prototype.

The spec's weight (``mnp.md`` 6.3) is ``sigmoid(beta * s_max)``. With s_max in [0.2, 1] and
beta = 1 it spans 0.55-0.73, so a hidden anomaly still counts about 0.8x a normal row: too mild
to keep contamination out of what the model learns as normal (the contamination benchmark found
no consistent effect). That form stays available as ``weighting="spec"``.

``weighting="adaptive"`` keeps the idea and lets the data set the strength. Once
per joint-training epoch it looks at the s_max distribution of the unlabelled pool and of the
labelled anomalies:

1. **Contamination estimate.** If hidden anomalies sit where the labelled ones do, the share of
   unlabelled rows whose s_max is at or below the labelled anomalies' median is about half the
   contamination share (normals sit above it once the prototypes separate the two), so
   ``eps = 2 * share``, clipped to [``EPS_MIN``, ``EPS_MAX``]. resolution, not from the paper: the
   clip bounds are priors (at least 1 %, so the least prototypical rows are always doubted; at
   most 25 %, so an epoch in which the labelled anomalies still sit amid the normals cannot
   discount most of the pool).
2. **Threshold and temperature.** ``tau`` is the eps-quantile of the pool's s_max and the weight is
   ``sigmoid((s_max - tau) / T)`` with ``T = (median - tau) / ln 19``: the median row gets 0.95, a
   row at the threshold 0.5, and rows as far below the threshold as the median is above it 0.05.
   The contrast therefore follows the spread of the data, not a fixed 1.33x.

``weighting="rank"`` (issue 12, second candidate) reads two signals instead of one: a row that
reconstructs badly is as unlike the normal data as one far from every prototype, and on the
contaminated pools of the benchmark the reconstruction error ranks hidden anomalies as well as or
better than s_max on most sets (``benchmarks/results/contamination12/`` notes). Each row's
*normality* is the mean of its two percentiles in the pool (high s_max, low r = normal). The
contamination share is a mixture-proportion bound: if hidden anomalies sit where the labelled ones
do, the pool's share below the labelled anomalies' q-quantile of normality is at least eps * q, so
``eps <= F_pool(t_q) / q`` for every q; the estimate is the smallest of those ratios over the upper
half of the labelled anomalies (the lower half is a few extreme rows, too noisy for a bound). The
threshold and temperature then work as the adaptive rule's, on normality instead of s_max.

The contamination share is estimated once, before the joint stage (see ``train_joint``), and
needs ``MIN_ANOMALIES_FOR_ESTIMATE`` labelled anomalies in training; with fewer the spec's form is
used. The threshold and temperature follow the pool every epoch, without gradients; the batch
renormalisation to mean 1 (:func:`.mnp_losses.renormalised_weights`) is unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = [
    "EPS_MAX",
    "EPS_MIN",
    "ESTIMATE_ROWS",
    "LikelihoodRule",
    "MIN_ANOMALIES_FOR_ESTIMATE",
    "RANK_GRID_POINTS",
    "Weighting",
    "adaptive_rule",
    "estimate_contamination",
    "estimate_contamination_bound",
    "free_sample",
    "normalise_weighting",
    "percentile_of",
    "rank_rule",
]

Weighting = Literal["adaptive", "rank", "spec", "off"]

EPS_MIN = 0.01
EPS_MAX = 0.25
# Fewest labelled anomalies (in training) whose scores the estimate reads; below it the rule falls
# back to the spec's form. resolution: with one training anomaly the estimate is one row's quantile
# and can discount a quarter of the normals (the validation run behind this number:
# benchmarks/results/dev/issue12_decision.md, "second round").
MIN_ANOMALIES_FOR_ESTIMATE = 2
# sigmoid(ln 19) = 0.95: the weight of the median unlabelled row.
_MEDIAN_WEIGHT_LOGIT = math.log(19.0)
# Rows of the pool whose s_max the epoch's estimate reads (a uniform sample beyond this).
ESTIMATE_ROWS = 4096
# Points of the pool's s_max and r quantile grids the rank rule keeps (and saves) to map any row to
# its percentiles: 65 points put a row within 1/64 of its exact percentile, a few hundred bytes.
RANK_GRID_POINTS = 65


def normalise_weighting(value: object) -> Weighting:
    """Accept the old boolean form of the parameter: True was the spec's weighting, False none."""
    if value is True:
        return "spec"
    if value is False:
        return "off"
    if value in ("adaptive", "rank", "spec", "off"):
        return value  # type: ignore[return-value]
    raise ValueError(f"weighting must be 'adaptive', 'rank', 'spec' or 'off'; got {value!r}")


@dataclass(frozen=True)
class LikelihoodRule:
    """Raw (pre-renormalisation) weight of an unlabelled row as a function of its s_max.

    ``spec``: ``sigmoid(beta * s_max)``; ``adaptive``: ``sigmoid((s_max - tau) / temperature)``;
    ``rank``: ``sigmoid((normality - tau) / temperature)`` with normality read off the saved
    quantile grids of s_max and r; ``off``: 1. ``contamination`` is the estimate of the adaptive
    and rank rules (None for the others).
    """

    kind: Weighting
    beta: float = 1.0
    tau: float = 0.0
    temperature: float = 1.0
    contamination: float | None = None
    s_grid: tuple[float, ...] = ()
    r_grid: tuple[float, ...] = ()
    # Grid tensors per (dtype, device): the rule is applied once per training batch, and rebuilding
    # two small tensors from tuples each time was a host-to-device copy per batch on a GPU.
    _grid_cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, compare=False, repr=False)

    def raw(self, s_max: torch.Tensor, rec: torch.Tensor | None = None) -> torch.Tensor:
        """Weights from s_max (and, for the rank rule, the reconstruction error ``rec``)."""
        if self.kind == "off":
            return torch.ones_like(s_max)
        if self.kind == "spec":
            return torch.sigmoid(self.beta * s_max)
        if self.kind == "rank":
            if rec is None:
                raise ValueError("the rank rule needs each row's reconstruction error")
            return torch.sigmoid((self.normality(s_max, rec) - self.tau) / self.temperature)
        return torch.sigmoid((s_max - self.tau) / self.temperature)

    def normality(self, s_max: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        """Mean of a row's pool percentiles of s_max and of -r: 1 = the most normal-looking."""
        key = (s_max.dtype, s_max.device)
        grids = self._grid_cache.get(key)
        if grids is None:
            grids = (torch.tensor(self.s_grid, dtype=s_max.dtype, device=s_max.device),
                     torch.tensor(self.r_grid, dtype=s_max.dtype, device=s_max.device))
            self._grid_cache[key] = grids
        s_grid, r_grid = grids
        rec = rec.to(s_max.dtype)
        return 0.5 * (percentile_of(s_max, s_grid) + 1.0 - percentile_of(rec, r_grid))

    def as_dict(self) -> dict[str, object]:
        """What the training summary records (and :meth:`from_dict` rebuilds at load)."""
        out: dict[str, object] = {"kind": self.kind, "beta": self.beta, "tau": round(self.tau, 6),
                                  "temperature": round(self.temperature, 6),
                                  "contamination": None if self.contamination is None else round(self.contamination, 5)}
        if self.s_grid:
            out["s_grid"] = [round(v, 7) for v in self.s_grid]
            out["r_grid"] = [round(v, 9) for v in self.r_grid]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LikelihoodRule:
        contamination = data.get("contamination")
        return cls(kind=normalise_weighting(data.get("kind", "spec")), beta=float(data.get("beta", 1.0)),  # type: ignore[arg-type]
                   tau=float(data.get("tau", 0.0)), temperature=float(data.get("temperature", 1.0)),  # type: ignore[arg-type]
                   contamination=None if contamination is None else float(contamination),  # type: ignore[arg-type]
                   s_grid=tuple(float(v) for v in data.get("s_grid", ()) or ()),  # type: ignore[union-attr]
                   r_grid=tuple(float(v) for v in data.get("r_grid", ()) or ()))  # type: ignore[union-attr]


def percentile_of(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each value's position in [0, 1] among the quantiles ``grid`` (ascending, evenly spaced in
    probability), interpolated linearly; below the first point 0, above the last 1."""
    n = grid.numel()
    if n < 2:
        return torch.full_like(values, 0.5)
    idx = torch.searchsorted(grid.contiguous(), values.contiguous()).clamp(1, n - 1)
    lo, hi = grid[idx - 1], grid[idx]
    frac = ((values - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return ((idx - 1).to(values.dtype) + frac) / (n - 1)


def estimate_contamination(s_pool: torch.Tensor, s_anomalies: torch.Tensor) -> float:
    """Twice the share of pool rows at or below the labelled anomalies' median s_max, clipped."""
    if not s_anomalies.numel() or not s_pool.numel():
        return EPS_MIN
    share = float((s_pool.detach().float() <= s_anomalies.detach().float().median()).float().mean())
    return min(EPS_MAX, max(EPS_MIN, 2.0 * share))


def adaptive_rule(s_pool: torch.Tensor, s_anomalies: torch.Tensor, contamination: float | None = None) -> LikelihoodRule:
    """The adaptive rule for one epoch from the pool's s_max and a contamination share (estimated
    from the labelled anomalies' s_max when not given)."""
    s_pool = s_pool.detach().float().flatten()
    if s_pool.numel() < 2:
        return LikelihoodRule(kind="off")
    eps = estimate_contamination(s_pool, s_anomalies) if contamination is None else contamination
    threshold = _threshold_at_share(s_pool, eps)
    if threshold is None:
        return LikelihoodRule(kind="off", contamination=eps)
    tau, temperature = threshold
    return LikelihoodRule(kind="adaptive", tau=tau, temperature=temperature, contamination=eps)


def _threshold_at_share(scores: torch.Tensor, share: float) -> tuple[float, float] | None:
    """(tau, temperature) putting weight 1/2 at the ``share``-quantile of the pool's scores and 0.95
    at their median; None for a degenerate pool (every row scores alike: nothing to tell apart, so
    the caller weights every row 1)."""
    tau, median = (float(v) for v in torch.quantile(scores, torch.tensor([share, 0.5], device=scores.device)))
    spread = median - tau
    if not spread > 1e-6:
        return None
    return tau, spread / _MEDIAN_WEIGHT_LOGIT


def estimate_contamination_bound(normal_pool: torch.Tensor, normal_anomalies: torch.Tensor) -> float:
    """Mixture-proportion bound on the hidden-anomaly share from normality scores, clipped.

    With the pool a mixture (1 - eps) normals + eps anomalies, and hidden anomalies distributed as the
    labelled ones, the pool's share at or below the labelled anomalies' q-quantile t_q is at least
    eps * q, so eps <= F_pool(t_q) / q. The smallest ratio over the upper half of the labelled
    anomalies (q >= 1/2) is the estimate; q = 1/2 alone is the adaptive rule's ``2 * share``.
    """
    a = torch.sort(normal_anomalies.detach().float().flatten()).values
    pool = normal_pool.detach().float().flatten()
    if not a.numel() or not pool.numel():
        return EPS_MIN
    n = a.numel()
    ratios = [float((pool <= a[j]).float().mean()) / ((j + 1) / n) for j in range((n - 1) // 2, n)]
    return min(EPS_MAX, max(EPS_MIN, min(ratios)))


def rank_rule(s_pool: torch.Tensor, r_pool: torch.Tensor, s_anomalies: torch.Tensor, r_anomalies: torch.Tensor,
              contamination: float | None = None) -> LikelihoodRule:
    """The rank rule for one epoch from the pool's and the labelled anomalies' s_max and r."""
    s_pool, r_pool = s_pool.detach().float().flatten(), r_pool.detach().float().flatten()
    if s_pool.numel() < 2:
        return LikelihoodRule(kind="off")
    probs = torch.linspace(0.0, 1.0, RANK_GRID_POINTS, device=s_pool.device)
    grids = LikelihoodRule(kind="rank", s_grid=tuple(torch.quantile(s_pool, probs).tolist()),
                           r_grid=tuple(torch.quantile(r_pool, probs).tolist()))
    v_pool = grids.normality(s_pool, r_pool)
    if contamination is None:
        contamination = estimate_contamination_bound(v_pool, grids.normality(s_anomalies.float(), r_anomalies.float()))
    threshold = _threshold_at_share(v_pool, contamination)
    if threshold is None:
        return LikelihoodRule(kind="off", contamination=contamination)
    tau, temperature = threshold
    return LikelihoodRule(kind="rank", tau=tau, temperature=temperature, contamination=contamination,
                          s_grid=grids.s_grid, r_grid=grids.r_grid)


def free_sample(confirmed: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Indices of at most ``ESTIMATE_ROWS`` pool rows no analyst confirmed: the rows every estimate
    and threshold is read from (bounded, so a 50,000-row pool costs what a 4,096-row one does)."""
    free = torch.nonzero(~confirmed).flatten()
    if len(free) > ESTIMATE_ROWS:
        free = free[torch.from_numpy(rng.choice(len(free), ESTIMATE_ROWS, replace=False)).to(free.device)]
    return free
