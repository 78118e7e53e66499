"""Isolation Forest (Liu, Ting and Zhou 2008) via scikit-learn: the unsupervised floor.

Why it is a peer: it ignores the labels, so any weakly supervised method that loses to it on a
dataset is not using its labelled anomalies well (the reference table shows that on cardio and
campaign). Fitted on the whole training part, unlabelled anomalies included.
"""
from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest as _SkIsolationForest

__all__ = ["IsolationForestPeer"]


class IsolationForestPeer:
    """``score`` is the negated ``score_samples`` (higher = more anomalous); ``y`` is ignored."""

    def __init__(self, *, n_estimators: int = 100, random_state: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike | None = None) -> Self:
        self.forest_ = _SkIsolationForest(n_estimators=self.n_estimators, random_state=self.random_state).fit(X)
        return self

    def score(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return -self.forest_.score_samples(X)
