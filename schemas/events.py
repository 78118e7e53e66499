"""Wire formats of what flows in: events, analysts' labels and dead letters.

Every model carries ``schema_version`` so that a consumer can refuse (dead-letter) a message
written by a newer producer instead of misreading it.
"""
from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "DeadLetter",
    "Event",
    "FeatureValue",
    "Label",
    "LabelSource",
    "LabelValue",
    "RejectStage",
]

#: A feature value: any finite number. NaN and +-inf are refused at validation time because a
#: single NaN poisons a whole forward pass (every score of the batch becomes NaN).
FeatureValue = Annotated[float, Field(allow_inf_nan=False)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256)]
LabelValue = Literal["anomaly", "normal"]
#: How the labelled event came to the analyst: ``alert`` (the model flagged it), ``audit`` (a random
#: sample of traffic, drawn without looking at scores) or ``manual`` (anything else). The promotion
#: gate measures on audit labels because their selection cannot be steered by the model or by
#: whoever controls the alerts' labels.
LabelSource = Literal["alert", "audit", "manual"]
RejectStage = Literal["decode", "validate", "features", "label-join", "score"]


class Event(BaseModel):
    """One observation to score.

    ``features`` is either a mapping name -> number (the model manifest says which names it
    needs and in which order; extra names are ignored) or a vector already in the manifest's
    order, the cheaper form for high-rate producers.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1
    event_id: Identifier
    ts: datetime
    entity: Identifier
    kind: Annotated[str, StringConstraints(max_length=256)] | None = None
    features: dict[str, FeatureValue] | list[FeatureValue]


class Label(BaseModel):
    """An analyst's answer about one event; a later label for the same event replaces it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    event_id: Identifier
    label: LabelValue
    analyst: Identifier
    ts: datetime
    note: Annotated[str, StringConstraints(max_length=4096)] | None = None
    #: provenance; "manual" for producers written before the field existed
    source: LabelSource = "manual"


class DeadLetter(BaseModel):
    """A consumed message that could not be processed, with enough context to replay it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    original_b64: str
    topic: str
    partition: int
    offset: int
    stage: RejectStage
    error_class: str
    error_message: str
    ts: datetime

    @property
    def original(self) -> bytes:
        """The original message bytes (decoded from base64)."""
        return base64.b64decode(self.original_b64)
