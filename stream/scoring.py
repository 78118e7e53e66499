"""(matrix, detector) -> scores, thresholds and explanations for the whole batch. Pure.

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
    """Per-row results of scoring one micro-batch (all arrays have one entry per row)."""

    scores: npt.NDArray[np.float32]
    thresholds: npt.NDArray[np.float32]
    nearest_prototype: npt.NDArray[np.int64] | None = None
    prototype_distance: npt.NDArray[np.float32] | None = None
    top_features: npt.NDArray[np.int64] | None = None
    top_contributions: npt.NDArray[np.float32] | None = None
    components: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    @property
    def is_alert(self) -> npt.NDArray[np.bool_]:
        return self.scores > self.thresholds


def _threshold_column(manifest: ModelManifest, n: int) -> npt.NDArray[np.float32]:
    # An uncalibrated model alerts on nothing rather than on everything.
    value = manifest.threshold if manifest.threshold is not None else np.inf
    return np.full(n, value, dtype=np.float32)


def _score_mnp(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32], n_top: int) -> ScoredBatch:
    exp = detector.explain(X, n_top=n_top)
    similarity = np.clip(exp.similarity, 1e-6, None)
    # s = 1 / (1 + d) for the Student-t kernel with alpha = 1, so d = 1/s - 1 (squared distance on the sphere).
    distance = (1.0 / similarity - 1.0).astype(np.float32)
    return ScoredBatch(
        scores=exp.score, thresholds=_threshold_column(manifest, len(X)), nearest_prototype=exp.nearest_prototype,
        prototype_distance=distance, top_features=exp.top_features, top_contributions=exp.top_contributions,
        components={"network_output": exp.score, "reconstruction_error": exp.reconstruction_error,
                    "prototype_similarity": exp.similarity},
    )


def _score_hgad(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32], kinds: Sequence[str | None]) -> ScoredBatch:
    exp = detector.explain(X, classes=list(kinds))
    thresholds = np.asarray(exp.threshold, dtype=np.float32)
    return ScoredBatch(
        scores=exp.score, thresholds=thresholds,
        components={"class_nll": exp.score, "claimed_vs_best_gap": np.nan_to_num(exp.claimed_vs_best_gap)},
    )


def score_batch(detector: Any, manifest: ModelManifest, X: npt.NDArray[np.float32],
                kinds: Sequence[str | None] | None = None, n_top: int = 3) -> ScoredBatch:
    """Score ``X`` with the served detector; HGAD uses ``kinds`` (the events' classes)."""
    if len(X) == 0:
        empty = np.empty(0, dtype=np.float32)
        return ScoredBatch(scores=empty, thresholds=empty)
    if manifest.detector == "hgad":
        return _score_hgad(detector, manifest, X, kinds if kinds is not None else [None] * len(X))
    return _score_mnp(detector, manifest, X, n_top)
