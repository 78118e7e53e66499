"""(matrix, detector) -> scores and thresholds for the whole batch, explanations for its alert rows. Pure.

Every row is scored on the detector's cheap path (``score``: one forward, nothing else) and
compared with its threshold; only the rows over threshold (about 2 % of traffic) are explained.
Explaining costs per-feature top-k, argmaxes and, for HGAD, per-row class names, all wasted on
rows that never become alerts. Rows are independent in both detectors, so a row's explanation does
not depend on which other rows are explained with it.

Nothing here depends on the detector kind: every detector scores rows under their claimed class
(``score_rows``; class-blind detectors ignore it) and explains rows with the one
:class:`~protoguard.trainer.detectors.explanation.Explanation` type (``explain_rows``). Thresholds
come from the manifest: the class's calibrated threshold where ``calibration.per_class`` has the
row's class, ``threshold`` otherwise, so a retrain that recalibrates is served as recorded.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..schemas.manifest import ModelManifest

__all__ = ["OUT_OF_RANGE", "ScoredBatch", "out_of_range", "row_thresholds", "score_batch"]


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of every row of one micro-batch, explanations of its alert rows only.

    ``scores`` and ``thresholds`` have one entry per row. ``alert_rows`` holds the (ascending)
    rows whose score exceeds its threshold; it is computed from the two when not given. The
    explanation columns (``nearest_prototype``, ``prototype_distance``, ``top_features``,
    ``top_contributions`` and every ``components`` entry) have one entry per *alert row*: entry
    ``i`` describes row ``alert_rows[i]``; None where the detector has no such explanation.

    A non-finite score (NaN, +-inf) makes its row an alert: see ``_alert_rows``.
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
            # Catches a caller passing per-row columns (one entry per scored row instead of one
            # per alert row): they would silently describe the wrong events.
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
    # A non-finite score is an alert, never a silent "not over threshold": NaN compares False with
    # every threshold, so the events a model cannot score (typically the most unusual ones) would
    # otherwise pass unseen. Alert rather than dead-letter, because the event itself was
    # valid and the analysts watching alerts are who must see it (build_alerts says why in the alert).
    return np.flatnonzero((scores > thresholds) | ~np.isfinite(scores))


#: Component of an alert raised because the event lies far outside the model's training range.
OUT_OF_RANGE = "out_of_training_range"


def out_of_range(manifest: ModelManifest, X: npt.NDArray[np.float32], spans: float) -> npt.NDArray[np.float32]:
    """Per row, how many training ranges its most extreme feature lies beyond the range the model
    was fitted on (0 inside it); only for MinMax-scaled models (MNP).

    Why: a network fed values it never saw extrapolates, and MNP's scoring network can saturate to
    "normal" (a feature at 1e6 of its training span scored 0.0 in tests/faults), so the most
    abnormal events would pass silently. HGAD clips its robust-scaled inputs, so it is not guarded
    here. ``spans`` <= 0 turns the guard off.
    """
    scaler = manifest.scaler
    if spans <= 0 or scaler is None or scaler.kind != "minmax" or len(X) == 0:
        return np.zeros(len(X), dtype=np.float32)
    scaled = (X - np.asarray(scaler.offset, np.float32)) / np.asarray(scaler.scale, np.float32)
    beyond = np.maximum(-scaled, scaled - 1.0).max(axis=1)
    return np.where(beyond > spans, beyond, 0.0).astype(np.float32)


def row_thresholds(manifest: ModelManifest, kinds: Sequence[str | None]) -> npt.NDArray[np.float32]:
    """Each row's threshold: its class's where the manifest calibrated one, the model's otherwise.

    An uncalibrated model (``threshold`` None) alerts on nothing rather than on everything.
    """
    default = manifest.threshold if manifest.threshold is not None else np.inf
    per_class = manifest.calibration.per_class
    if not per_class:
        return np.full(len(kinds), default, dtype=np.float32)
    return np.array([per_class.get(k, default) if k is not None else default for k in kinds], dtype=np.float32)


def score_batch(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32],
                kinds: Sequence[str | None] | None = None, n_top: int = 3,
                out_of_range_spans: float = 0.0) -> ScoredBatch:
    """Score every row of ``X`` with the served detector and explain the rows over threshold.

    ``kinds`` are the events' claimed classes (None: unknown); class-blind detectors ignore them.
    The returned alert content is that of the version that explained every row; only the
    explanation columns' indexing changed (see :class:`ScoredBatch`).
    """
    if len(X) == 0:
        empty = np.empty(0, dtype=np.float32)
        return ScoredBatch(scores=empty, thresholds=empty)
    kinds = list(kinds) if kinds is not None else [None] * len(X)
    scores = detector.score_rows(X, kinds)
    thresholds = row_thresholds(manifest, kinds)
    rows = _alert_rows(scores, thresholds)
    extreme = out_of_range(manifest, X, out_of_range_spans)
    if extreme.any():  # events far outside the training range alert whatever the network says
        rows = np.union1d(rows, np.flatnonzero(extreme))
    # One call, also for zero rows: every detector answers an empty batch without a forward pass,
    # and the columns keep their shapes (e.g. top_features (0, n_top)).
    exp = detector.explain_rows(X[rows], [kinds[r] for r in rows.tolist()], n_top=n_top)
    # The alert's score component is the full-batch score, the value that was compared with the
    # threshold, so an alert never shows a score at or under its threshold; explain_rows' own score
    # for the row is the same value (rows are independent; tests/unit/test_scoring.py).
    return ScoredBatch(scores=scores, thresholds=thresholds, alert_rows=rows, nearest_prototype=exp.nearest_prototype,
                       prototype_distance=exp.prototype_distance, top_features=exp.top_features,
                       top_contributions=exp.top_contributions,
                       components={exp.score_name: scores[rows], **exp.components,
                                   **({OUT_OF_RANGE: extreme[rows]} if extreme.any() else {})})
