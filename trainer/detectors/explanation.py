"""The one explanation type every detector returns for the rows the scorer alerts on.

Why one type: the scorer (``stream/scoring.py``) compares each row's score with its threshold and
explains the rows over it. When every detector answers ``explain_rows(X, classes, n_top=...)``
with an :class:`Explanation`, the scorer needs no per-detector code: a new detector kind only has
to fill the columns it can explain (prototype, per-feature contributions, named components).

The detector's own ``explain`` (``MNPExplanation``, ``HGADExplanation``) stays the richer,
detector-specific view for notebooks and tests; ``explain_rows`` is the narrow view an alert needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Explanation", "from_prototype_explanation"]


@dataclass(frozen=True)
class Explanation:
    """Per-row explanation columns; every array has one entry per explained row.

    Attributes
    ----------
    score : float32 (n,)
        The detector's score of each row (higher = more anomalous).
    score_name : str
        The name under which an alert's ``components`` carry the score (``network_output`` for MNP,
        ``class_nll`` for HGAD and gauss). The scorer puts the score it compared with the threshold
        there, so an alert never shows a score at or under its threshold.
    components : dict of str to float32 (n,)
        Further named numbers per row (reconstruction error, claimed-vs-best-class gap, ...).
    nearest_prototype : int64 (n,) or None
    prototype_distance : float32 (n,) or None
    top_features : int64 (n, k) or None
        Indices into the model's feature names, most contributing first.
    top_contributions : float32 (n, k) or None
    """

    score: npt.NDArray[np.float32]
    score_name: str
    components: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    nearest_prototype: npt.NDArray[np.int64] | None = None
    prototype_distance: npt.NDArray[np.float32] | None = None
    top_features: npt.NDArray[np.int64] | None = None
    top_contributions: npt.NDArray[np.float32] | None = None


def from_prototype_explanation(exp: Any) -> Explanation:
    """The alert view of a prototype detector's explanation (MNP's ``explain``).

    Kept here rather than in ``mnp.py`` because that module belongs to the MNP work stream; the
    mapping is the one the scorer applied before it became detector-agnostic: distance
    ``d = 1/s - 1`` from the Student-t similarity ``s = 1 / (1 + d)`` (alpha = 1).
    """
    similarity = np.clip(exp.similarity, 1e-6, None)
    return Explanation(
        score=exp.score, score_name="network_output",
        components={"reconstruction_error": exp.reconstruction_error, "prototype_similarity": exp.similarity},
        nearest_prototype=exp.nearest_prototype, prototype_distance=(1.0 / similarity - 1.0).astype(np.float32),
        top_features=exp.top_features, top_contributions=exp.top_contributions,
    )
