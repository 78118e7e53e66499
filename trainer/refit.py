"""Fit a retrain candidate of the champion's detector kind from the label loop's data. No I/O.

Why per kind: the detectors learn from different parts of the same data.

- **MNP** (weakly supervised) takes labelled anomalies as X_A, the reservoir as X_U and confirmed
  normals with weight 1 (:func:`~.training.fit_mnp`, unchanged);
- **class-aware normal-only detectors** (HGAD, gauss) fit the normal side only: the reservoir
  minus labelled events plus confirmed normals, each row with its class. Labelled anomalies are
  left out of training (a flow or Gaussian fitted on them would call them normal); they still
  count where they matter, on the held-back labels in the promotion gate.

Where the classes come from: the label store and the reservoir keep feature rows, not the
events' ``kind`` (the scorer would have to write it; see the issue-15 note). Until they do, a
row's class is the class under which the *champion* finds it most likely
(``champion.predict_class``). This keeps every class the champion serves and assigns rows that
belong to a class to it; what it cannot do is learn a class the champion never saw. For the same
reason the retrain's threshold (the trainer's alert budget over the reservoir's scores) and the
gate see class-agnostic scores: a class swap counts as normal there, and a retrained class-aware
model serves one budget threshold for all classes instead of its per-class normal quantiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .training import TrainingData, fit_mnp

__all__ = ["CandidateRecipe", "fit_candidate", "recipe_for"]


@dataclass(frozen=True)
class CandidateRecipe:
    """What a retrain needs for a detector kind: whether labelled anomalies are required to fit."""

    kind: str
    needs_labelled_anomalies: bool


_RECIPES = {
    "mnp": CandidateRecipe("mnp", needs_labelled_anomalies=True),
    "hgad": CandidateRecipe("hgad", needs_labelled_anomalies=False),
    "gauss": CandidateRecipe("gauss", needs_labelled_anomalies=False),
}


def recipe_for(kind: str) -> CandidateRecipe:
    """The retrain recipe of a detector kind (unknown kinds are refused by name)."""
    if kind not in _RECIPES:
        raise ValueError(f"no retrain recipe for detector kind {kind!r}; known: {sorted(_RECIPES)}")
    return _RECIPES[kind]


def fit_candidate(kind: str, data: TrainingData, *, champion: Any, mnp_params: dict[str, Any],
                  warm_start: Any | None, random_state: int | None) -> Any:
    """A fitted candidate of ``kind``; MNP exactly as before, class-aware kinds on normal rows.

    A class-aware candidate keeps the champion's hyperparameters (the operator chose them when
    registering it) with the trainer's ``random_state``; it is fitted from scratch (no warm start:
    HGAD's and gauss's fits are short, and a fresh fit cannot inherit a drifted champion's state).
    """
    if recipe_for(kind).kind == "mnp":
        return fit_mnp(data, params=mnp_params, warm_start=warm_start, random_state=random_state)
    X = np.concatenate([data.X_unlabelled, data.X_normals]).astype(np.float32)
    classes = champion.predict_class(X)
    candidate = champion.clone().set_params(random_state=random_state)
    return candidate.fit(X, classes, feature_names=list(data.feature_names))
