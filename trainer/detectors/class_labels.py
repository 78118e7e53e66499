"""Class labels of class-aware detectors (HGAD, gauss): normalisation, indexing, held-out split.

Both detectors take each event's class (``Event.kind``: device type, tenant, service) next to its
features, key per-class thresholds by the class name in the manifest, and fall back to a
class-agnostic score for rows whose class is missing or was never seen in training.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HOLDOUT_FRACTION", "Labels", "as_label", "class_indices", "encode_training_classes", "holdout_mask"]

Labels = npt.ArrayLike | str | int | None

#: When no validation rows are given, this share of each class's training rows is held out for
#: model selection and threshold calibration (classes with fewer than _MIN_HOLDOUT_CLASS rows are
#: calibrated on their training scores instead: a few rows cannot be spared).
HOLDOUT_FRACTION = 0.15
_MIN_HOLDOUT_CLASS = 20


def as_label(value: Any) -> str | None:
    """Class labels are compared as ``str(label)``; None and NaN mean "class unknown"."""
    # resolution: the spec's classes are categorical names; the manifest keys per-class thresholds
    # by str, so int 3 and "3" are one class (and 3.0 is "3.0", another one).
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return str(value)


def encode_training_classes(classes: npt.ArrayLike, n_rows: int) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Sorted class names and each row's index into them; every training row needs a class."""
    labels = [as_label(v) for v in np.asarray(classes, dtype=object).ravel()]
    if len(labels) != n_rows:
        raise ValueError(f"classes must have one label per row of X: got {len(labels)} labels for {n_rows} rows.")
    if any(v is None for v in labels):
        raise ValueError("classes contains None/NaN; every training row needs a class label.")
    names = sorted(set(labels))  # type: ignore[type-var]
    index = {c: i for i, c in enumerate(names)}
    return names, np.array([index[v] for v in labels], dtype=np.int64)  # type: ignore[index]


def class_indices(classes: Labels, n_rows: int, known: list[str]) -> npt.NDArray[np.int64]:
    """Index of each row's class in ``known``, -1 where missing or unknown.

    ``classes`` may be one label per row, a single label for the whole batch, or None.
    """
    if classes is None:
        return np.full(n_rows, -1, dtype=np.int64)
    values = np.asarray(classes, dtype=object)
    if values.ndim == 0:
        values = np.full(n_rows, values.item(), dtype=object)
    values = values.ravel()
    if len(values) != n_rows:
        raise ValueError(f"classes must have one label per row of X: got {len(values)} labels for {n_rows} rows.")
    index = {c: i for i, c in enumerate(known)}
    return np.array([index.get(as_label(v), -1) for v in values], dtype=np.int64)  # type: ignore[arg-type]


def holdout_mask(y: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """True for training rows; a stratified ``HOLDOUT_FRACTION`` of each large-enough class is False."""
    train = np.ones(len(y), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) >= _MIN_HOLDOUT_CLASS:
            n_hold = max(1, int(round(HOLDOUT_FRACTION * len(rows))))
            train[rng.choice(rows, n_hold, replace=False)] = False
    return train
