"""Stage 2 of MNP (spec ``mnp.md`` section 5): where the K normal prototypes start.

The prototypes start at k-means centres of embeddings of rows believed normal, with K chosen by
silhouette when not given. Kept apart from the training loop because it is plain scikit-learn on
numpy, and because which rows count as "believed normal" is the part the label-frugal mode had to
decide (spec Q5).
"""
from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from torch import nn

from ...schemas.errors import ConfigError
from .mnp_network import MNPNetwork
from .mnp_weighting import LikelihoodRule

__all__ = ["SILHOUETTE_K_RANGE", "choose_prototypes", "kmeans", "normal_embeddings", "reweighted_prototypes"]

# Rows k-means sees at most (a uniform sample beyond this).
_KMEANS_MAX_ROWS = 10_000
# Rows the silhouette of each candidate K is measured on. resolution (speed): the silhouette is
# quadratic in rows, so on 10,000 rows the nine candidate K cost several seconds of every member-0
# fit; sklearn's ``sample_size`` estimates it on a seeded uniform sample instead.
_SILHOUETTE_ROWS = 3_000
SILHOUETTE_K_RANGE = range(2, 11)
# Frugal mode: the share of worst-reconstructed pool rows left out of k-means (likely anomalies).
_FRUGAL_DROP_TOP_RECONSTRUCTION = 0.05


def normal_embeddings(net: MNPNetwork, pool: torch.Tensor, reference_normals: torch.Tensor | None, seed: int,
                      *, normalise: bool) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]:
    """Embeddings of the rows the prototypes are fitted to, and their indices in ``pool`` (None
    when they are the reference normals), so that a later step can weigh the same rows.

    With ``reference_normals`` (the labelled validation normals of the reference protocol) those;
    otherwise (resolution, spec Q5) the unlabelled pool minus its 5 % worst-reconstructed rows,
    subsampled to 10k rows. ``normalise`` (spec Q6 option, fixed variant) clusters on the unit
    sphere, where the prototypes live; the faithful variant clusters raw z.
    """
    net.eval()
    rows: npt.NDArray[np.int64] | None = None
    with torch.inference_mode():
        if reference_normals is not None:
            z = net.encoder(reference_normals)
        else:
            z_all = net.encoder(pool)
            err = ((net.decoder(z_all) - pool) ** 2).mean(1)
            keep = err <= torch.quantile(err, 1.0 - _FRUGAL_DROP_TOP_RECONSTRUCTION) if len(pool) > 20 else err == err
            rows = torch.nonzero(keep).flatten().cpu().numpy().astype(np.int64)
            z = z_all[keep]
            if len(z) > _KMEANS_MAX_ROWS:
                pick = np.random.default_rng(seed).choice(len(z), _KMEANS_MAX_ROWS, replace=False)
                z = z[torch.from_numpy(pick).to(z.device)]
                rows = rows[pick]
        if normalise:
            z = nn.functional.normalize(z, dim=1)
    return z.cpu().numpy().astype(np.float64), rows


def kmeans(Z: npt.NDArray[np.float64], k: int, seed: int, sample_weight: npt.NDArray[np.float64] | None = None,
           ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Centres and labels of k-means with k clusters (n_init pinned to 10: resolution, spec Q8)."""
    with warnings.catch_warnings():
        # Duplicate embeddings make k-means find fewer distinct clusters; the silhouette loop
        # skips such K, so the warning carries no extra information.
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(Z, sample_weight=sample_weight)
    return km.cluster_centers_.astype(np.float32), km.labels_


def reweighted_prototypes(net: MNPNetwork, rule: LikelihoodRule, rows: torch.Tensor, Z: npt.NDArray[np.float64],
                          seed: int) -> npt.NDArray[np.float32]:
    """k-means centres of ``Z`` (the embeddings of ``rows``) with each row weighted by ``rule``.

    Why: the frugal placement drops only the 5 % worst-reconstructed rows, so at 10-20 %
    contamination hidden anomalies still pull centres (or a whole prototype) towards themselves,
    and every later weight is measured against those centres. K stays that of the first placement
    (the silhouette is not weighted, so choosing K again would add nothing).
    """
    net.eval()
    with torch.inference_mode():
        out = net(rows)
        weights = rule.raw(out.s_max, out.rec).double().cpu().numpy()
    k = int(net.prototypes.shape[0])
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        return net.prototypes.detach().cpu().numpy().astype(np.float32)
    return kmeans(Z, k, seed, sample_weight=weights)[0]


def choose_prototypes(Z: npt.NDArray[np.float64], n_prototypes: int | None, seed: int,
                      ) -> tuple[npt.NDArray[np.float32], dict[str, float]]:
    """k-means centres for ``n_prototypes``, or for the K in 2..10 of highest silhouette.

    Returns the centres and the silhouette per K tried (empty when K was given).
    """
    if n_prototypes is not None:
        if n_prototypes > len(Z):
            raise ConfigError(f"n_prototypes={n_prototypes} exceeds the {len(Z)} rows available to k-means.")
        return kmeans(Z, n_prototypes, seed)[0], {}
    scores: dict[str, float] = {}
    best: tuple[float, npt.NDArray[np.float32]] | None = None
    for k in SILHOUETTE_K_RANGE:
        if k >= len(Z):
            break
        centres, labels = kmeans(Z, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        sample = _SILHOUETTE_ROWS if len(Z) > _SILHOUETTE_ROWS else None
        value = float(silhouette_score(Z, labels, sample_size=sample, random_state=seed))
        scores[str(k)] = round(value, 5)
        if best is None or value > best[0]:
            best = (value, centres)
    if best is None:
        return kmeans(Z, 1, seed)[0], scores
    return best[1], scores
