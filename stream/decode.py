"""Raw Kafka values -> (validated events as a float32 matrix, rejects with reasons). Pure; never raises on input.

Two paths give the same answer; the fast one is tried first, chunk by chunk.

- **Exact path** (``_decode_exactly``), the definition of what is accepted: per message, orjson
  parses it (refused: a ``decode`` reject), pydantic validates the whole ``Event``
  (``validate``), its features are put in the manifest's order (``features``: a missing name,
  an array of the wrong length), and a value that overflows float32 is refused naming the field.
- **Fast path** (``_decode_chunk_fast``), for chunks of well-formed messages: orjson per message
  (C); one pydantic validation (Rust) of the chunk's headers, i.e. ``Event`` without its
  features; and the feature values go from orjson's lists or dicts into the float32 matrix in C
  (``struct`` packs each event's values as float64 in one call, numpy casts the chunk). No
  per-value Python code and no pydantic float per value, which were most of the old decoder's
  time. It takes a chunk only when every check that could make the exact path answer otherwise
  has passed (each value a JSON number, each array of the manifest's length or each mapping
  holding every name, all finite in float32). A chunk it refuses is retried in pieces of four
  messages, and the pieces refused again go the exact way (``_decode_span``).
  ``tests/unit/test_decode.py`` checks that both paths agree, bit for bit, on random mixes of
  good and bad messages.

The array form of ``features`` is the cheapest: no keys to parse, no reordering. A mapping whose
keys come in the manifest's order (what ``protoguard replay`` sends) is read with ``dict.values``;
one in another order goes through an ``itemgetter`` of the names, which costs more.

Why chunks (``_CHUNK_VALUES`` feature values each) rather than the whole batch in one go: the
Python floats orjson makes for one chunk stay in the core's cache and are freed before the next
chunk reuses that memory: 1.2x to 1.8x faster, measured. A bad message costs its chunk a second
attempt and its piece of four the exact path, not its whole batch.

Where the time goes now: orjson's parse is the largest part (half or more; a mapping's keys are
parsed too), then pydantic's headers (a third of it on 32 features, mostly making the
``datetime``; little on 186), then the matrix.

Why not one ``TypeAdapter(list[Event]).validate_json`` over ``b"[" + b",".join(values) + b"]"``:
measured on this data, pydantic's JSON parser is slower than orjson, and it would still make and
validate a Python float per feature. And a message that is not one JSON value (``1,2``,
``{...},{...}``, an unclosed ``[``) can shift its neighbours in a joined array in ways that an
element count does not always catch (one message adding an element, another swallowing one).
Here each message is parsed on its own and orjson refuses trailing data, so no message can leak
into another.

**Native path** (``_decode_native``, in front of the fast path when ``stream/_rowscan.c`` is
built, which ``pip install`` does): for a 186-feature mapping, orjson making 186 Python floats
and a 186-entry dict was most of the decoder's time. The C scanner reads each message once and
writes its features straight into a float64 matrix; it hands back the message minus its
``features`` member (the "header"), which orjson and pydantic then treat as the fast path
treats headers. It says yes only to shapes it fully understands (an array of the manifest's
length, or a mapping with exactly the manifest's names in order, plain JSON numbers) and leaves
every other message, and every chunk whose headers fail, to the paths above. The bit-for-bit
tests run all three paths.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from itertools import chain, starmap
from operator import itemgetter, methodcaller
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict  # pydantic's own dependency; it needs this TypedDict on 3.11

from ..schemas.events import Event, RejectStage

try:
    from . import _rowscan  # type: ignore[attr-defined]  # the C extension: stream/_rowscan.c
except ImportError:  # a checkout installed without a compiler: the Python paths alone, slower
    _rowscan = None

#: Whether the native scanner is in use (the decoder benchmark reports it; a unit test requires it).
NATIVE_SCANNER = _rowscan is not None

__all__ = ["DecodedBatch", "NATIVE_SCANNER", "Reject", "decode_batch"]


def _header_type() -> Any:
    """``Event`` without ``features``, as a TypedDict with the very same field types and rules.

    Pydantic validates it like the model's fields but returns a plain dict, skipping the model
    instance: that halves the per-event cost of the headers on the fast path. Deriving it from
    ``Event.model_fields`` keeps one definition of the wire format (a unit test checks that
    ``Event`` has no validators or config this copy would miss).
    """
    fields: dict[str, Any] = {}
    for name, info in Event.model_fields.items():
        if name == "features":
            continue
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = annotation if info.is_required() else NotRequired[annotation]
    return TypedDict("EventHeaderFields", fields)  # type: ignore[operator]


_EVENT = TypeAdapter(Event)
_HEADERS = TypeAdapter(list[_header_type()])  # type: ignore[misc]
_FEATURES = itemgetter("features")
_FLOAT32_MAX_TEXT = str(np.finfo(np.float32).max)  # 3.4028235e+38, for messages
#: Feature values per fast-path chunk. orjson makes one Python float per value; about 4k of them
#: (plus their lists or dicts, ~200 KiB) stay in a core's cache and are freed before the next
#: chunk reuses that memory: 1.2x-1.8x over parsing a 2048-message batch in one go, on 186 and
#: on 32 features. Much smaller chunks pay the fixed cost per chunk (a pydantic call, a few numpy
#: calls) too often. Chunk sizes were compared interleaved, on one core.
_CHUNK_VALUES = 4096
_MIN_CHUNK, _MAX_CHUNK = 16, 256
#: Messages per native chunk: its headers are validated in one pydantic call, and a chunk with one
#: bad header goes the Python way whole. No float objects are made here, so the cache argument
#: above does not apply; 256 keeps pydantic's per-call cost small and a bad message's blast radius
#: a few hundred messages of the slower path.
_NATIVE_CHUNK = 256
#: Messages per piece when a chunk is retried after the fast path refused it (see _decode_span).
_RETRY_CHUNK = 4

_RowGetter = Callable[[dict[str, Any]], tuple[Any, ...]]


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

    ``indices[i]`` is the position in the input of the event in row ``i`` of ``X``; ``rejects``
    are sorted by index, and every input position is in exactly one of the two.
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


def decode_batch(values: Sequence[bytes | None], feature_names: Sequence[str]) -> DecodedBatch:
    """Decode and validate ``values`` into a float32 matrix with columns ``feature_names``.

    Never raises on bad input: every message ends in the batch (a row of ``X``) or in
    ``rejects`` with the stage that refused it and a message naming the field. ``features`` may
    be a mapping name -> number or an array in ``feature_names`` order (see ``Event``); the array
    is the cheaper form to decode.

    Examples
    --------
    >>> good = b'{"event_id":"a","ts":1700000000,"entity":"h1","features":{"x":1.5,"y":2}}'
    >>> array = b'{"event_id":"b","ts":1700000000,"entity":"h1","features":[3,4.25]}'
    >>> missing_y = b'{"event_id":"c","ts":1,"entity":"h","features":{"x":1}}'
    >>> huge = b'{"event_id":"d","ts":1,"entity":"h","features":{"x":1e39,"y":0}}'
    >>> batch = decode_batch([good, b'{"event_id":', array, missing_y, huge], ["x", "y"])
    >>> batch.X.tolist(), batch.event_ids, [(r.index, r.stage) for r in batch.rejects]
    ([[1.5, 2.0], [3.0, 4.25]], ['a', 'b'], [(1, 'decode'), (3, 'features'), (4, 'features')])
    >>> batch.rejects[2].message
    'features.x: 1e+39 is outside the float32 range the model computes in (|x| <= 3.4028235e+38)'
    """
    return _decode(values, feature_names, chunk_size=_chunk_size(len(feature_names)))


def _chunk_size(n_features: int) -> int:
    """Messages per fast-path chunk: about ``_CHUNK_VALUES`` feature values."""
    return min(max(_CHUNK_VALUES // max(n_features, 1), _MIN_CHUNK), _MAX_CHUNK)


class _Collector:
    """The batch being assembled: accepted rows in input order, their headers, and the rejects."""

    def __init__(self, n_values: int, n_features: int) -> None:
        self.X = np.empty((n_values, n_features), dtype=np.float32)
        self.n_rows = 0
        self.indices: list[int] = []
        self.headers: list[dict[str, Any]] = []
        self.rejects: list[Reject] = []  # spans are visited in input order: this stays sorted

    def next_rows(self, n: int) -> npt.NDArray[np.float32]:
        """Where the next ``n`` accepted rows go (a view of ``X``)."""
        return self.X[self.n_rows:self.n_rows + n]

    def accept(self, indices: Iterable[int], headers: list[dict[str, Any]]) -> None:
        """Keep ``headers`` and as many rows, already written by the caller to ``next_rows``."""
        self.indices.extend(indices)
        self.headers.extend(headers)
        self.n_rows += len(headers)

    def batch(self) -> DecodedBatch:
        headers = self.headers
        return DecodedBatch(
            indices=np.asarray(self.indices, dtype=np.int64),
            event_ids=list(map(itemgetter("event_id"), headers)),
            entities=list(map(itemgetter("entity"), headers)),
            timestamps=list(map(itemgetter("ts"), headers)),
            kinds=list(map(methodcaller("get", "kind"), headers)),  # optional: absent means None
            X=self.X if self.n_rows == len(self.X) else self.X[:self.n_rows].copy(),
            rejects=self.rejects,
        )


def _decode(values: Sequence[bytes | None], feature_names: Sequence[str], *, chunk_size: int,
            use_fast_path: bool = True, use_native: bool = True, native_chunk: int = 0) -> DecodedBatch:
    """``decode_batch`` with the chunk size given, and the fast and native paths optional (the
    tests compare all three). ``native_chunk``: messages per native chunk (0: ``_NATIVE_CHUNK``)."""
    names = list(feature_names)
    getter = _row_getter(names) if len(set(names)) == len(names) else None
    out = _Collector(len(values), len(names))
    if use_fast_path:
        sizes = (chunk_size, _RETRY_CHUNK) if chunk_size > _RETRY_CHUNK else (chunk_size,)
        if use_native and _rowscan is not None and names:
            _decode_native(values, names, sizes, getter, out, native_chunk or _NATIVE_CHUNK)
        else:
            _decode_span(values, 0, len(values), sizes, names, getter, out)
    else:
        _decode_exactly(values, 0, len(values), names, out)
    return out.batch()


def _decode_native(values: Sequence[bytes | None], names: list[str], sizes: tuple[int, ...],
                   getter: _RowGetter | None, out: _Collector, chunk: int) -> None:
    """The C scanner over the whole batch, then, in input order: runs it accepted are finished here
    in chunks (headers parsed and validated, rows cast to float32), everything else goes to
    ``_decode_span``. A chunk whose headers or float32 rows fail goes there whole."""
    n, d = len(values), len(names)
    rows = np.empty((n, d), dtype=np.float64)
    heads = _rowscan.scan_rows(values if type(values) is list else list(values), _scanner_names(tuple(names)), d, rows)
    start = 0
    while start < n:
        accepted = heads[start] is not None
        stop = start + 1
        while stop < n and (heads[stop] is not None) == accepted and (not accepted or stop - start < chunk):
            stop += 1
        if not accepted or not _accept_native(heads[start:stop], rows[start:stop], start, out):
            _decode_span(values, start, stop, sizes, names, getter, out)
        start = stop


def _accept_native(heads: list[bytes], rows: npt.NDArray[np.float64], start: int, out: _Collector) -> bool:
    """Finish a chunk the scanner accepted; False (nothing kept) when the Python paths must look."""
    try:
        headers: list[dict[str, Any]] = _HEADERS.validate_python(list(map(orjson.loads, heads)))
    except ValueError:  # orjson.JSONDecodeError and pydantic's ValidationError are ValueErrors
        return False
    target = out.next_rows(len(heads))
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: the span path names it
        target[...] = rows
    if not np.isfinite(target).all():
        return False
    out.accept(range(start, start + len(heads)), headers)
    return True


@lru_cache(maxsize=16)
def _scanner_names(names: tuple[str, ...]) -> tuple[bytes, ...] | None:
    """The names as the scanner compares them (raw UTF-8 of unescaped JSON keys), or None: only
    the array form is scanned. A name JSON would have to escape (a quote, a backslash, a control
    character), one that is not valid UTF-8, or a repeated name leaves mappings to Python."""
    if len(set(names)) != len(names):
        return None
    try:
        encoded = tuple(name.encode("utf-8") for name in names)
    except UnicodeEncodeError:
        return None
    if any(b'"' in raw or b"\\" in raw or min(raw, default=32) < 32 for raw in encoded):
        return None
    return encoded


def _decode_span(values: Sequence[bytes | None], start: int, stop: int, sizes: tuple[int, ...], names: list[str],
                 getter: _RowGetter | None, out: _Collector) -> None:
    """Decode ``values[start:stop]`` in fast pieces of ``sizes[0]`` messages.

    A piece the fast path refuses is tried again in pieces of the next size (``_RETRY_CHUNK``),
    and only a piece refused at the last size is decoded the exact way. So one bad message
    costs a few neighbours the exact path, not its whole chunk, and a run of bad messages costs
    at most two fast attempts more than the exact path alone. Pieces are visited in input order.
    """
    size = sizes[0]
    for piece_start in range(start, stop, size):
        piece_stop = min(piece_start + size, stop)
        headers = _decode_chunk_fast(values[piece_start:piece_stop], names, getter,
                                     out.next_rows(piece_stop - piece_start))
        if headers is not None:
            out.accept(range(piece_start, piece_stop), headers)
        elif len(sizes) > 1:
            _decode_span(values, piece_start, piece_stop, sizes[1:], names, getter, out)
        else:
            _decode_exactly(values, piece_start, piece_stop, names, out)


def _row_getter(names: list[str]) -> _RowGetter:
    """A C-level ``features dict -> values in names order`` (``itemgetter`` returns a bare value for one name)."""
    if len(names) >= 2:
        return itemgetter(*names)
    if len(names) == 1:
        only = names[0]
        return lambda features: (features[only],)
    return lambda features: ()


def _decode_chunk_fast(chunk: Sequence[bytes | None], names: list[str], getter: _RowGetter | None,
                       out: npt.NDArray[np.float32]) -> list[dict[str, Any]] | None:
    """The headers of ``chunk`` with its rows written to ``out``, or None: the chunk needs a closer look.

    Each check here is one that, skipped, could let this path accept a message that the exact
    path refuses, or read another value than it would; so anything unusual answers None.
    ``getter`` is None when ``names`` repeats a name (then only features already in order pass).
    """
    try:
        objs = list(map(orjson.loads, chunk))
        headers: list[dict[str, Any]] = _HEADERS.validate_python(objs)  # only dicts pass this
        rows = _rows_in_order(list(map(_FEATURES, objs)), names, getter)
        if rows is None:
            return None
        # One C call per event packs its values as float64 (the exact path's first rounding;
        # float32 is the second, below): struct takes ints, floats and bools the way float()
        # does and refuses anything else, the type check the exact path gets from pydantic.
        packed = b"".join(starmap(_packer(len(names)), rows))
    except (ValueError, TypeError, KeyError, OverflowError, ValidationError, struct.error):
        # orjson.JSONDecodeError is a ValueError; TypeError: a None or other non-bytes value, or
        # an unused value that is not a number (_check_numbers); KeyError: no "features", a
        # missing name; struct.error: a value that is not a number.
        return None
    with np.errstate(over="ignore"):  # an overflow becomes inf, found just below
        out[...] = np.frombuffer(packed, dtype=np.float64).reshape(out.shape)
    return headers if np.isfinite(out).all() else None


@lru_cache(maxsize=16)
def _packer(n_features: int) -> Callable[..., bytes]:
    """``struct.Struct(...).pack`` of ``n_features`` native float64s (one per manifest width)."""
    return struct.Struct(f"={n_features}d").pack


def _rows_in_order(features: list[Any], names: list[str], getter: _RowGetter | None) -> Iterable[Iterable[Any]] | None:
    """Each event's feature values in ``names`` order (still Python objects), or None if the exact path must look.

    May raise TypeError (an unused value that is not a number) or KeyError (a missing name).
    """
    d = len(names)
    types = set(map(type, features))
    if types == {list}:
        # The exact path says which array has the wrong length.
        return features if set(map(len, features)) == {d} else None
    if types != {dict}:
        return None  # a mix of forms, or features that are neither an array nor a mapping
    if min(map(len, features)) < d:
        return None  # a name is missing somewhere
    order = list(features[0])
    if order == names and all(map(order.__eq__, map(list, features))):
        # Keys in manifest order (what replay and most producers send): values() as they are.
        # Comparing key lists is cheap, as orjson hands out one str object per distinct key.
        return map(dict.values, features)
    if getter is None:
        return None
    # Pydantic checks every value of a mapping, unused names' too, so this path must as well.
    _check_numbers(chain.from_iterable(map(dict.values, features)))
    return map(getter, features)


def _check_numbers(values: Iterable[Any]) -> None:
    """Raise TypeError unless every value is a JSON number (an int, a float or a bool).

    A C loop: ``sum`` raises TypeError at the first str, None, list or dict, the only other
    things orjson makes. Bools pass, as pydantic's float takes them (1.0, 0.0); strings, which
    pydantic parses by its own rules, are left to the exact path.
    """
    sum(values, 0.0)


def _decode_exactly(values: Sequence[bytes | None], start: int, stop: int, names: list[str], out: _Collector) -> None:
    """The exact path for ``values[start:stop]``: each message on its own, the float32 check done once for all."""
    outcomes = [_decode_one(index, values[index], names) for index in range(start, stop)]
    events = [o for o in outcomes if not isinstance(o, Reject)]
    rows = np.empty((len(events), len(names)), dtype=np.float32)
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused below naming the field
        rows[...] = np.asarray([row_values for _, _, row_values in events], dtype=np.float64).reshape(rows.shape)
    finite = np.isfinite(rows)
    row = 0
    for index, outcome in enumerate(outcomes, start):
        if isinstance(outcome, Reject):
            out.rejects.append(outcome)
            continue
        header, is_mapping, features = outcome
        if finite[row].all():
            out.next_rows(1)[0] = rows[row]
            out.accept((index,), [header])
        else:
            # float32 is what the model sees: a finite float64 beyond its range would be inf there.
            j = int(np.flatnonzero(~finite[row])[0])
            where = f"features.{names[j]}" if is_mapping else f"features.{j} ({names[j]})"
            out.rejects.append(Reject(index, "features", "OverflowError",
                                      f"{where}: {features[j]!r} is outside the float32 range the model computes "
                                      f"in (|x| <= {_FLOAT32_MAX_TEXT})"))
        row += 1


def _decode_one(index: int, value: bytes | None, names: list[str]) -> tuple[dict[str, Any], bool, list[float]] | Reject:
    """One message the exact way: (header, whether features was a mapping, values in ``names`` order), or why not."""
    try:
        obj = orjson.loads(value)  # type: ignore[arg-type]  # None and other non-bytes are rejected here
    except (orjson.JSONDecodeError, TypeError) as exc:
        return Reject(index, "decode", type(exc).__name__, f"decode: {exc}")
    try:
        event = _EVENT.validate_python(obj)
    except ValidationError as exc:
        return Reject(index, "validate", "ValidationError", _format_error(exc.errors(include_url=False)[0]))
    header = {"event_id": event.event_id, "entity": event.entity, "ts": event.ts, "kind": event.kind}
    features = event.features
    if isinstance(features, dict):
        missing = [n for n in names if n not in features]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            return Reject(index, "features", "KeyError", f"features: missing feature(s): {shown}")
        return header, True, [features[n] for n in names]
    if len(features) != len(names):
        return Reject(index, "features", "ValueError",
                      f"features: expected {len(names)} feature values, got {len(features)} "
                      "(an array holds the model manifest's feature_names, in that order)")
    return header, False, features


def _format_error(error: Any) -> str:
    # Drop pydantic's union-member tags ("dict[str,float]") so the path reads features.bytes_in.
    loc = ".".join(str(p) for p in error["loc"] if not (isinstance(p, str) and "[" in p)) or "event"
    return f"validate: {loc}: {error['msg']}"
