"""Scores over threshold -> Alert messages. Pure; Python objects only for the (few) alerts, whose
explanations :func:`~protoguard.stream.scoring.score_batch` computed for those rows only."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from ..schemas.alerts import Alert, FeatureContribution, alert_id
from .decode import DecodedBatch
from .scoring import ScoredBatch

__all__ = ["NON_FINITE_SCORE", "build_alerts"]

#: Component set to 1 on an alert raised because the model's score was NaN or infinite; the alert's
#: ``score`` is then the float32 maximum, so that JSON readers get a number (JSON has no NaN).
NON_FINITE_SCORE = "non_finite_score"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def build_alerts(batch: DecodedBatch, scored: ScoredBatch, *, model_version: str,
                 feature_names: Sequence[str]) -> list[tuple[bytes, bytes, Alert]]:
    """(key, value, alert) for every row whose score exceeds its threshold; key = entity.

    Row ``r = scored.alert_rows[i]`` takes its event fields, score and threshold from row ``r`` of
    the batch and its explanation from entry ``i`` of the explanation columns (explained rows only).
    """
    rows = scored.alert_rows if scored.alert_rows is not None else np.flatnonzero(scored.is_alert)
    out: list[tuple[bytes, bytes, Alert]] = []
    for i, r in enumerate(rows.tolist()):
        top: list[FeatureContribution] = []
        if scored.top_features is not None and scored.top_contributions is not None:
            top = [FeatureContribution(name=feature_names[int(f)], contribution=float(c))
                   for f, c in zip(scored.top_features[i], scored.top_contributions[i])]
        score = float(scored.scores[r])
        components = {name: float(col[i]) for name, col in scored.components.items() if np.isfinite(col[i])}
        if not np.isfinite(score):
            components[NON_FINITE_SCORE] = 1.0
            score = _FLOAT32_MAX
        alert = Alert(
            alert_id=alert_id(batch.event_ids[r], model_version),
            event_id=batch.event_ids[r], entity=batch.entities[r], ts=batch.timestamps[r],
            score=score, threshold=float(scored.thresholds[r]), model_version=model_version,
            nearest_prototype=None if scored.nearest_prototype is None else int(scored.nearest_prototype[i]),
            prototype_distance=None if scored.prototype_distance is None else _finite(float(scored.prototype_distance[i])),
            top_features=[t for t in top if np.isfinite(t.contribution)],
            components=components,
        )
        out.append((batch.entities[r].encode(), orjson.dumps(alert.model_dump(mode="json")), alert))
    return out
