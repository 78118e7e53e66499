"""Which rows of one member's training data are held out, and what they early-stop.

Why a module of its own: without a labelled validation split (spec Q5), the label-frugal mode
decides which unlabelled rows stand in for "normal" validation data and which labelled anomalies
are set aside to early-stop the joint stage; the pool screen (:mod:`.mnp_screening`) then narrows
the former. Kept apart from the estimator so that this one decision, and the order in which it
draws random numbers (every benchmark row depends on it), lives in one place.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .base import FloatMatrix

__all__ = ["HoldOut", "split_holdouts"]

# Frugal mode (spec Q5 resolution): shares of the data held out.
_FRUGAL_ANOMALY_HOLDOUT = 0.2
_FRUGAL_UNLABELLED_HOLDOUT = 0.1
_FRUGAL_MAX_UNLABELLED_HOLDOUT = 5_000
_FRUGAL_MIN_UNLABELLED_FOR_HOLDOUT = 50


@dataclass(frozen=True)
class HoldOut:
    """One member's training rows and its hold-outs.

    ``pretrain_val``: rows believed normal that early-stop pretraining (labelled validation normals,
    or held-out unlabelled rows); ``held_anomalies``: labelled anomalies set aside (frugal mode only);
    ``stop_X``/``stop_y``: what early-stops the joint stage (None: a fixed schedule).
    """

    anomalies: FloatMatrix
    unlabelled: FloatMatrix
    pretrain_val: FloatMatrix | None = None
    held_anomalies: FloatMatrix | None = None
    stop_X: FloatMatrix | None = None
    stop_y: npt.NDArray[np.int64] | None = None

    def with_pretrain_val(self, rows: FloatMatrix) -> HoldOut:
        """The same hold-out with fewer "normal" rows (after a screen); a frugal stopping set is
        rebuilt from them and the held-out anomalies."""
        if self.held_anomalies is None:
            return dataclasses.replace(self, pretrain_val=rows)
        return dataclasses.replace(self, pretrain_val=rows, **_stopping_set(rows, self.held_anomalies))


def _stopping_set(normal: FloatMatrix, anomalies: FloatMatrix) -> dict[str, np.ndarray]:
    return {"stop_X": np.vstack([normal, anomalies]),
            "stop_y": np.r_[np.zeros(len(normal), np.int64), np.ones(len(anomalies), np.int64)]}


def split_holdouts(anomalies: FloatMatrix, unlabelled: FloatMatrix,
                   val: tuple[FloatMatrix, npt.NDArray[np.int64]] | None, validation: str,
                   joint_holdout: bool, rng: np.random.Generator) -> HoldOut:
    """The hold-outs of one member fit on scaled rows.

    With ``val`` (the reference protocol's labelled split) its normals early-stop pretraining and
    the whole split the joint stage. In frugal mode (resolution, spec Q5) 10 % of the unlabelled
    rows (at most 5,000) are held out as "normal": they early-stop pretraining (label-free) and are
    left out of k-means; with ``joint_holdout`` and 2 or more labelled anomalies, 20 % of those are
    held out as well and the two together early-stop the joint stage (spec: fewer than 2 labelled
    anomalies -> fixed epochs). Otherwise nothing is held out.
    """
    if val is not None:
        return HoldOut(anomalies, unlabelled, pretrain_val=val[0][val[1] == 0], stop_X=val[0], stop_y=val[1])
    if validation != "frugal" or len(unlabelled) < _FRUGAL_MIN_UNLABELLED_FOR_HOLDOUT:
        return HoldOut(anomalies, unlabelled)
    n_hold = min(math.ceil(_FRUGAL_UNLABELLED_HOLDOUT * len(unlabelled)), _FRUGAL_MAX_UNLABELLED_HOLDOUT)
    perm = rng.permutation(len(unlabelled))
    held_normal, unlabelled = unlabelled[perm[:n_hold]], unlabelled[perm[n_hold:]]
    if not (joint_holdout and len(anomalies) >= 2):
        return HoldOut(anomalies, unlabelled, pretrain_val=held_normal)
    n_hold_a = max(1, round(_FRUGAL_ANOMALY_HOLDOUT * len(anomalies)))
    perm_a = rng.permutation(len(anomalies))
    held, anomalies = anomalies[perm_a[:n_hold_a]], anomalies[perm_a[n_hold_a:]]
    return HoldOut(anomalies, unlabelled, pretrain_val=held_normal, held_anomalies=held,
                   **_stopping_set(held_normal, held))
