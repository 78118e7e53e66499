"""(matrix, detector) -> scores and thresholds for the whole batch, explanations for its alert rows. Pure.

Every row is scored on the detector's cheap path (``score``: one forward, nothing else) and
compared with its threshold; only the rows over threshold (about 2 % of traffic) are explained.
Explaining costs per-feature top-k, argmaxes and, for HGAD, per-row class names, all wasted on
rows that never become alerts. Rows are independent in both detectors, so a row's explanation does
not depend on which other rows are explained with it.

One adapter per detector kind turns the detector's own explanation into the columns an alert
needs, so the worker and alert builder never care which detector is served.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..schemas.manifest import ModelManifest

__all__ = ["ScoredBatch", "score_batch"]


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of every row of one micro-batch, explanations of its alert rows only.

    ``scores`` and ``thresholds`` have one entry per row. ``alert_rows`` holds the (ascending)
    rows whose score exceeds its threshold; it is computed from the two when not given. The
    explanation columns (``nearest_prototype``, ``prototype_distance``, ``top_features``,
    ``top_contributions`` and every ``components`` entry) have one entry per *alert row*: entry
    ``i`` describes row ``alert_rows[i]``; None where the detector has no such explanation.

    A NaN score compares False with any threshold: the row is not an alert and is not explained.
    """

    scores: npt.NDArray[np.float32]
    thresholds: npt.NDArray[np.float32]
    alert_rows: npt.NDArray[np.int64] | None = None
    nearest_prototype: npt.NDArray[np.int64] | None = None
    prototype_distance: npt.NDArray[np.float32] | None = None
    top_features: npt.NDArray[np.int64] | None = None
    top_contributions: npt.NDArray[np.float32] | None = None
    components: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.alert_rows is None:
            object.__setattr__(self, "alert_rows", _alert_rows(self.scores, self.thresholds))
        assert self.alert_rows is not None
        n_alerts = len(self.alert_rows)
        columns = {"nearest_prototype": self.nearest_prototype, "prototype_distance": self.prototype_distance,
                   "top_features": self.top_features, "top_contributions": self.top_contributions,
                   **{f"components[{name!r}]": col for name, col in self.components.items()}}
        for name, col in columns.items():
            # Catches a caller still passing per-row columns (the layout before explanations
            # were limited to alert rows): they would silently describe the wrong events.
            if col is not None and len(col) != n_alerts:
                raise ValueError(f"ScoredBatch.{name} has {len(col)} entries; it needs one per alert row ({n_alerts}).")

    @property
    def is_alert(self) -> npt.NDArray[np.bool_]:
        """Per-row mask of ``alert_rows``."""
        mask = np.zeros(len(self.scores), dtype=bool)
        if self.alert_rows is not None:  # always set by __post_init__; the check is for type checkers
            mask[self.alert_rows] = True
        return mask


def _alert_rows(scores: npt.NDArray[np.float32], thresholds: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    return np.flatnonzero(scores > thresholds)


def _threshold_column(manifest: ModelManifest, n: int) -> npt.NDArray[np.float32]:
    # An uncalibrated model alerts on nothing rather than on everything.
    value = manifest.threshold if manifest.threshold is not None else np.inf
    return np.full(n, value, dtype=np.float32)


def _score_mnp(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32], n_top: int) -> ScoredBatch:
    scores = detector.score(X)
    thresholds = _threshold_column(manifest, len(X))
    rows = _alert_rows(scores, thresholds)
    exp = detector.explain(X[rows], n_top=n_top)
    similarity = np.clip(exp.similarity, 1e-6, None)
    # s = 1 / (1 + d) for the Student-t kernel with alpha = 1, so d = 1/s - 1 (squared distance on the sphere).
    distance = (1.0 / similarity - 1.0).astype(np.float32)
    # The alert's score and network_output are the full-batch scores, the values that were compared
    # with the threshold, so an alert never shows a score at or under its threshold; explain's own
    # score for the row is the same value (rows are independent; tests/unit/test_scoring.py).
    return ScoredBatch(
        scores=scores, thresholds=thresholds, alert_rows=rows, nearest_prototype=exp.nearest_prototype,
        prototype_distance=distance, top_features=exp.top_features, top_contributions=exp.top_contributions,
        components={"network_output": scores[rows], "reconstruction_error": exp.reconstruction_error,
                    "prototype_similarity": exp.similarity},
    )


def _score_hgad(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32], kinds: Sequence[str | None]) -> ScoredBatch:
    # HGAD thresholds are per claimed class, so they come with the scores, before any explanation.
    scores, thresholds = detector.score_with_threshold(X, classes=kinds)
    rows = _alert_rows(scores, thresholds)
    if len(rows):
        exp = detector.explain(X[rows], classes=[kinds[r] for r in rows.tolist()])
        gap = np.nan_to_num(exp.claimed_vs_best_gap)
    else:
        gap = np.empty(0, dtype=np.float32)  # HGADDetector.explain needs at least one row
    # class_nll is the full-batch score that was compared with the threshold (explain's is equal).
    return ScoredBatch(scores=scores, thresholds=thresholds, alert_rows=rows,
                       components={"class_nll": scores[rows], "claimed_vs_best_gap": gap})


def score_batch(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32],
                kinds: Sequence[str | None] | None = None, n_top: int = 3) -> ScoredBatch:
    """Score every row of ``X`` with the served detector and explain the rows over threshold.

    HGAD uses ``kinds`` (the events' classes). The signature and the returned alert content are
    those of the version that explained every row; only the explanation columns' indexing changed
    (see :class:`ScoredBatch`).
    """
    if len(X) == 0:
        empty = np.empty(0, dtype=np.float32)
        return ScoredBatch(scores=empty, thresholds=empty)
    if manifest.detector == "hgad":
        return _score_hgad(detector, manifest, X, list(kinds) if kinds is not None else [None] * len(X))
    return _score_mnp(detector, manifest, X, n_top)
