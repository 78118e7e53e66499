"""Raw Kafka values -> (validated events as a float32 matrix, rejects with reasons). Pure; never raises on input.

The happy path does one pass per stage over the whole batch: one list comprehension of
``orjson.loads`` (C), one pydantic ``TypeAdapter`` validation of the list (Rust), one
``np.fromiter`` over ``itemgetter`` tuples (C) for the matrix. Only when a stage fails does it
fall back to a per-message pass to find *which* messages are bad, so a malformed event costs its
batch a slower decode, never an exception and never a lost message.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import TypeAdapter, ValidationError

from ..schemas.events import Event, RejectStage

__all__ = ["DecodedBatch", "Reject", "decode_batch"]

_EVENT_LIST = TypeAdapter(list[Event])
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Reject:
    """A message that will become a dead letter: its position in the input batch and why."""

    index: int
    stage: RejectStage
    error_class: str
    message: str


@dataclass(frozen=True)
class DecodedBatch:
    """The accepted events of a batch, column-wise, plus the rejects.

    ``indices[i]`` is the position in the input of the event in row ``i`` of ``X``.
    """

    indices: npt.NDArray[np.int64]
    event_ids: list[str]
    entities: list[str]
    timestamps: list[datetime]
    kinds: list[str | None]
    X: npt.NDArray[np.float32]
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)


def _loads_one(value: Any) -> tuple[Any, Reject | None]:
    try:
        return orjson.loads(value), None
    except (orjson.JSONDecodeError, TypeError) as exc:
        return None, Reject(-1, "decode", type(exc).__name__, f"decode: {exc}")


def _parse_json(values: Sequence[Any]) -> tuple[list[int], list[Any], list[Reject]]:
    loads = orjson.loads
    try:
        return list(range(len(values))), [loads(v) for v in values], []
    except (orjson.JSONDecodeError, TypeError):
        pass
    kept: list[int] = []
    objs: list[Any] = []
    rejects: list[Reject] = []
    for i, value in enumerate(values):
        obj, reject = _loads_one(value)
        if reject is None:
            kept.append(i)
            objs.append(obj)
        else:
            rejects.append(Reject(i, reject.stage, reject.error_class, reject.message))
    return kept, objs, rejects


def _format_error(error: Any) -> str:
    # Drop pydantic's union-member tags ("dict[str,float]") so the path reads features.bytes_in.
    loc = ".".join(str(p) for p in error["loc"][1:] if not (isinstance(p, str) and "[" in p)) or "event"
    return f"validate: {loc}: {error['msg']}"


def _validate(kept: list[int], objs: list[Any]) -> tuple[list[int], list[Event], list[Reject]]:
    rejects: list[Reject] = []
    # Each failing pass removes at least one message, so this ends; in practice it runs at most twice.
    while objs:
        try:
            return kept, _EVENT_LIST.validate_python(objs), rejects
        except ValidationError as exc:
            bad: dict[int, str] = {}
            for error in exc.errors(include_url=False):
                loc = error["loc"]
                position = loc[0] if loc and isinstance(loc[0], int) else None
                if position is None:  # not per-item (cannot happen for a list input); drop everything
                    bad = {j: _format_error(error) for j in range(len(objs))}
                    break
                bad.setdefault(position, _format_error(error))
            rejects.extend(Reject(kept[j], "validate", "ValidationError", msg) for j, msg in bad.items())
            kept = [k for j, k in enumerate(kept) if j not in bad]
            objs = [o for j, o in enumerate(objs) if j not in bad]
    return kept, [], rejects


def _row(features: dict[str, float] | list[float], names: Sequence[str]) -> list[float]:
    if isinstance(features, dict):
        missing = [n for n in names if n not in features]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise KeyError(f"missing feature(s): {shown}")
        return [features[n] for n in names]
    if len(features) != len(names):
        raise ValueError(f"expected {len(names)} feature values, got {len(features)}")
    return list(features)


def _matrix(events: list[Event], names: Sequence[str]) -> tuple[npt.NDArray[np.float64], list[int], list[tuple[int, str, str]]]:
    n, d = len(events), len(names)
    feats = [e.features for e in events]
    if d and all(type(f) is dict for f in feats):
        getter = itemgetter(*names)
        try:
            rows = map(getter, feats) if d > 1 else ((getter(f),) for f in feats)
            X = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=n * d).reshape(n, d)
            return X, list(range(n)), []
        except KeyError:
            pass
    good: list[int] = []
    data: list[list[float]] = []
    failures: list[tuple[int, str, str]] = []
    for j, f in enumerate(feats):
        try:
            data.append(_row(f, names))
            good.append(j)
        except (KeyError, ValueError) as exc:
            failures.append((j, type(exc).__name__, f"features: {exc.args[0]}"))
    X = np.asarray(data, dtype=np.float64).reshape(len(good), d)
    return X, good, failures


def decode_batch(values: Sequence[bytes | None], feature_names: Sequence[str]) -> DecodedBatch:
    """Decode and validate ``values`` into a float32 matrix with columns ``feature_names``.

    Never raises on bad input: every message ends in the batch (a row of ``X``) or in
    ``rejects`` with the stage that refused it and a message naming the field.

    Examples
    --------
    >>> good = b'{"event_id":"a","ts":1700000000,"entity":"h1","features":{"x":1.5,"y":2}}'
    >>> batch = decode_batch([good, b'{"event_id":', b'{"event_id":"b","ts":1,"entity":"h","features":{"x":1}}'], ["x", "y"])
    >>> batch.X.tolist(), [r.stage for r in batch.rejects]
    ([[1.5, 2.0]], ['decode', 'features'])
    """
    kept, objs, rejects = _parse_json(values)
    kept, events, invalid = _validate(kept, objs)
    rejects.extend(invalid)
    X64, good, failures = _matrix(events, feature_names)
    rejects.extend(Reject(kept[j], "features", cls, msg) for j, cls, msg in failures)
    # float32 is what the model sees: a finite float64 beyond float32's range would become inf there.
    in_range = np.all(np.abs(X64) <= _FLOAT32_MAX, axis=1)
    if not in_range.all():
        rejects.extend(
            Reject(kept[good[r]], "features", "OverflowError", "features: a value exceeds the float32 range")
            for r in np.flatnonzero(~in_range)
        )
        good = [g for g, ok in zip(good, in_range) if ok]
        X64 = X64[in_range]
    accepted = [events[j] for j in good]
    rejects.sort(key=lambda r: r.index)
    return DecodedBatch(
        indices=np.fromiter((kept[j] for j in good), dtype=np.int64, count=len(good)),
        event_ids=[e.event_id for e in accepted],
        entities=[e.entity for e in accepted],
        timestamps=[e.ts for e in accepted],
        kinds=[e.kind for e in accepted],
        X=X64.astype(np.float32),
        rejects=rejects,
    )
