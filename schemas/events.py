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
    "Identifier",
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

    ``features`` comes in one of two forms (the model manifest's ``feature_names`` says which
    features a model needs and in which order):

    - a **mapping** name -> number, e.g. ``{"dur": 0.5, "sbytes": 1200}``: self-describing; names
      the manifest does not list are ignored (but must still be numbers), a missing name is a
      dead letter;
    - an **array** of numbers in exactly the manifest's order and length, e.g. ``[0.5, 1200]``:
      the cheapest form on the wire and to decode, meant for high-rate producers that know the
      manifest. For UNSW-NB15's 186 features it is a third of the mapping's bytes and the scorer
      decodes it 2 to 3 times faster (``benchmarks/decode_throughput.py``).

    Every value must be a finite number (a numeric string is parsed, as pydantic does); the
    scorer also refuses one that overflows float32 (what the model computes in), naming the
    feature. A mapping is decoded fastest when its keys come in the manifest's order.

    Examples
    --------
    >>> Event(event_id="e1", ts=1_700_000_000, entity="h1", features=[0.5, 1200]).features
    [0.5, 1200.0]
    >>> Event(event_id="e2", ts="2026-01-02T03:04:05Z", entity="h1", features={"dur": 0.5}).features
    {'dur': 0.5}
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1
    event_id: Identifier
    ts: datetime
    entity: Identifier
    kind: Annotated[str, StringConstraints(max_length=256)] | None = None
    features: dict[str, FeatureValue] | list[FeatureValue] = Field(
        description=(
            "Either a mapping feature name -> number (extra names ignored) or an array of numbers in the "
            "order of the model manifest's feature_names (the cheaper form). Values must be finite."
        ),
    )


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
    """A consumed message that could not be processed, with enough context to replay it.

    ``dead_letter_id`` is derived from (topic, partition, offset) only, so a message dead-lettered
    again after a re-delivery gets the same id and readers can de-duplicate. The original bytes are
    kept up to a configured size (``stream.dead_letter_max_bytes``): a poison pill of any size
    still becomes a dead letter that fits the producer's request limit; ``original_size`` and
    ``original_sha256`` describe the whole message, ``truncated`` says whether bytes were cut.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    dead_letter_id: str = ""
    original_b64: str
    original_size: int | None = None
    original_sha256: str | None = None
    truncated: bool = False
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
