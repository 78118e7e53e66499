"""Gradient boosting on "labelled anomaly vs unlabelled" (scikit-learn HistGradientBoostingClassifier).

Why it is a peer: the naive supervised answer to weak labels (PU learning without a correction).
With 1 % of anomalies labelled it sees a handful of positives against thousands of negatives, half
of the real anomalies among them, so it mostly memorises the labelled rows: the reference table
shows it near the floor on pendigits, satimage-2 and mammography. Early stopping is off because
its stratified validation split fails with a single labelled anomaly.
"""
from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier

__all__ = ["HGBPeer"]


class HGBPeer:
    """``score`` is ``predict_proba`` of the labelled-anomaly class (higher = more anomalous)."""

    def __init__(self, *, max_iter: int = 100, random_state: int | None = None) -> None:
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> Self:
        self.model_ = HistGradientBoostingClassifier(
            max_iter=self.max_iter, early_stopping=False, random_state=self.random_state
        ).fit(X, np.asarray(y).astype(np.int64).ravel())
        return self

    def score(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return self.model_.predict_proba(X)[:, 1]
