"""The alert published for an event whose score crosses the model's threshold."""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["Alert", "FeatureContribution", "alert_id"]


def alert_id(event_id: str, model_version: str) -> str:
    """Deterministic alert id, so a re-delivered event yields the same id and sinks can dedupe.

    >>> alert_id("e-1", "3") == alert_id("e-1", "3")
    True
    >>> alert_id("e-1", "3") == alert_id("e-1", "4")
    False
    """
    digest = hashlib.sha256(f"{event_id}\x00{model_version}".encode()).hexdigest()
    return digest[:32]


class FeatureContribution(BaseModel):
    """One feature's share of the score (for MNP: its reconstruction error)."""

    model_config = ConfigDict(frozen=True)

    name: str
    contribution: float


class Alert(BaseModel):
    """An anomalous event, with what the model saw: nearest prototype, top features, components."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    alert_id: str
    event_id: str
    entity: str
    ts: datetime
    score: float
    threshold: float
    model_version: str
    nearest_prototype: int | None = None
    prototype_distance: float | None = None
    top_features: list[FeatureContribution] = []
    components: dict[str, float] = {}
