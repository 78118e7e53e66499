"""stream/decode.py: every input ends as an event or a reject, never an exception."""
from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protoguard.schemas.events import Event
from protoguard.stream.decode import DecodedBatch, _decode, decode_batch

NAMES = ["bytes_in", "bytes_out", "duration"]


def event(i: int, **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": f"e{i}", "ts": 1_700_000_000 + i, "entity": "host-1",
        "features": {"bytes_in": 10.0 * i, "bytes_out": 2.0, "duration": 0.5},
    }
    base.update(over)
    return base


def test_valid_batch_becomes_matrix_in_feature_order() -> None:
    values = [orjson.dumps(event(i)) for i in range(5)]
    batch = decode_batch(values, NAMES)
    assert batch.rejects == []
    assert batch.X.dtype == np.float32 and batch.X.shape == (5, 3)
    np.testing.assert_allclose(batch.X[:, 0], [0, 10, 20, 30, 40])
    assert batch.event_ids == [f"e{i}" for i in range(5)]
    assert batch.indices.tolist() == [0, 1, 2, 3, 4]


def test_vector_features_and_extra_names_are_accepted() -> None:
    values = [orjson.dumps(event(0, features=[1, 2, 3])),
              orjson.dumps(event(1, features={"bytes_in": 1, "bytes_out": 2, "duration": 3, "other": 9}))]
    batch = decode_batch(values, NAMES)
    assert batch.rejects == []
    assert batch.X.tolist() == [[1, 2, 3], [1, 2, 3]]


@pytest.mark.parametrize(
    ("value", "stage", "fragment"),
    [
        (b'{"event_id": "x", "ts"', "decode", "decode"),
        (b"\xff\xfe\x00garbage", "decode", "decode"),
        (None, "decode", "decode"),
        (orjson.dumps(event(1, features={"bytes_in": "many", "bytes_out": 1, "duration": 1})), "validate", "validate: features.bytes_in: Input should be a valid number"),
        (orjson.dumps({k: v for k, v in event(1).items() if k != "event_id"}), "validate", "event_id: Field required"),
        (b'{"event_id":"x","ts":1,"entity":"h","features":{"bytes_in":NaN,"bytes_out":1,"duration":1}}', "decode", "decode"),
        (b'{"event_id":"x","ts":1,"entity":"h","features":{"bytes_in":1e400,"bytes_out":1,"duration":1}}', None, ""),
        (orjson.dumps(event(1, features={"bytes_in": 1e300, "bytes_out": 1, "duration": 1})), "features",
         "features.bytes_in: 1e+300 is outside the float32 range"),
        (orjson.dumps(event(1, features=[1, -1e39, 1])), "features",
         "features.1 (bytes_out): -1e+39 is outside the float32 range"),
        (orjson.dumps(event(1, features={"bytes_in": 1})), "features", "missing feature(s): bytes_out, duration"),
        (orjson.dumps(event(1, features=[1, 2])), "features", "expected 3 feature values, got 2"),
        (orjson.dumps(event(1, schema_version=2)), "validate", "schema_version"),
        (b"[1, 2, 3]", "validate", "Input should be a valid dictionary"),
    ],
)
def test_bad_event_is_rejected_with_a_reason_and_neighbours_survive(value: bytes | None, stage: str | None, fragment: str) -> None:
    values = [orjson.dumps(event(0)), value, orjson.dumps(event(2))]
    batch = decode_batch(values, NAMES)
    assert batch.event_ids == ["e0", "e2"]
    assert batch.indices.tolist() == [0, 2]
    assert len(batch.rejects) == 1
    reject = batch.rejects[0]
    assert reject.index == 1
    if stage is not None:
        assert reject.stage == stage
    assert fragment in reject.message


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
feature_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**30), max_value=10**30), st.text(max_size=5), st.none())
events_strategy = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(max_size=300), json_scalars),
        "ts": st.one_of(st.integers(min_value=-(10**12), max_value=10**12), st.text(max_size=30), json_scalars),
        "entity": st.one_of(st.text(max_size=10), json_scalars),
        "kind": json_scalars,
        "schema_version": st.one_of(st.just(1), json_scalars),
        "features": st.one_of(
            st.dictionaries(st.sampled_from(NAMES + ["x"]), feature_values, max_size=4),
            st.lists(feature_values, max_size=4),
            json_scalars,
        ),
    },
)


def _to_bytes(obj: object) -> bytes:
    # orjson refuses NaN/inf and huge ints; write those the way a sloppy producer would.
    return repr(obj).replace("'", '"').replace("None", "null").replace("True", "true").replace("False", "false").encode()


raw_values = st.one_of(
    st.binary(max_size=200),
    events_strategy.map(_to_bytes),
    events_strategy.map(lambda e: _to_bytes(e)[: max(0, len(_to_bytes(e)) // 2)]),  # truncated JSON
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_values, max_size=12))
def test_every_input_ends_as_event_or_reject(values: list[bytes | None]) -> None:
    batch = decode_batch(values, NAMES)
    accepted = set(batch.indices.tolist())
    rejected = {r.index for r in batch.rejects}
    assert accepted.isdisjoint(rejected)
    assert accepted | rejected == set(range(len(values)))
    assert batch.X.shape == (len(accepted), len(NAMES))
    assert np.all(np.isfinite(batch.X))
    assert all(r.message for r in batch.rejects)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False), min_size=3, max_size=3))
def test_valid_numbers_round_trip_to_float32(row: list[float]) -> None:
    batch = decode_batch([orjson.dumps(event(0, features=dict(zip(NAMES, row))))], NAMES)
    assert batch.rejects == []
    np.testing.assert_allclose(batch.X[0], np.asarray(row, dtype=np.float32))
    assert not any(math.isnan(v) for v in batch.X[0])


# --- the fast path (chunks) and the exact path (per message) must give the same answer ---------


def _comparable(batch: DecodedBatch, offset: int = 0) -> tuple[object, ...]:
    return (
        [i + offset for i in batch.indices.tolist()], batch.event_ids, batch.entities, batch.timestamps, batch.kinds,
        batch.X.dtype, batch.X.shape, batch.X.tobytes(),
        [(r.index + offset, r.stage, r.error_class, r.message) for r in batch.rejects],
    )


def _concatenated(parts: list[DecodedBatch]) -> tuple[object, ...]:
    combined: list[list[object]] = [[] for _ in range(9)]
    for i, part in enumerate(parts):
        for acc, value in zip(combined, _comparable(part, offset=i)):
            if isinstance(value, list):
                acc.extend(value)
            else:
                acc.append(value)
    indices, ids, entities, timestamps, kinds, _, _, _, rejects = combined
    X = np.concatenate([p.X for p in parts]) if parts else np.empty((0, len(NAMES)), np.float32)
    return (indices, ids, entities, timestamps, kinds, X.dtype, X.shape, X.tobytes(), rejects)


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # includes values beyond float32's range
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # orjson's int range; beyond 2**53, rounding matters
    st.just(2**60 + 2**36 + 1),  # int -> float64 -> float32 differs from int -> float32 here
    st.booleans(),
)
good_dict_features = st.permutations(NAMES).flatmap(  # any key order, sometimes an extra name
    lambda order: st.tuples(st.lists(numbers, min_size=3, max_size=3),
                            st.dictionaries(st.sampled_from(["extra", "other"]), numbers, max_size=1))
    .map(lambda t: {**dict(zip(order, t[0])), **t[1]}))
good_events = st.builds(
    lambda i, ts, kind, features: {"event_id": f"e{i}", "ts": ts, "entity": f"h{i % 3}", "features": features,
                                   **({"kind": kind} if kind is not None else {})},
    st.integers(0, 10**6), st.one_of(st.integers(0, 2 * 10**9), st.floats(0, 2e9), st.just("2026-01-02T03:04:05Z")),
    st.one_of(st.none(), st.sampled_from(["dos", "scan"])),
    st.one_of(good_dict_features, st.lists(numbers, min_size=3, max_size=3)),
)
# Values where numpy, Python's float() and pydantic could disagree: each path must give pydantic's answer.
tricky_numbers = ["\u0661\u0662", "1_0", " 1.5", "nan", "Infinity", "1e400", None, True, [1.0], {"a": 1},
                  1e39, -3.4028235e38]
tricky_values = st.builds(
    lambda i, value, as_array: orjson.dumps(event(i, features=[value, 1, 2] if as_array else
                                                  {"bytes_in": value, "bytes_out": 1, "duration": 2})),
    st.integers(0, 99), st.sampled_from(tricky_numbers), st.booleans())
mixed_values = st.one_of(
    good_events.map(_to_bytes),
    good_events.map(_to_bytes),  # twice: most of a real batch is good
    raw_values,
    tricky_values,
    st.sampled_from([b"", b" ", b"1,2", b'{"a":1},{"b":2}', b"null", b"[]", b'"features"']),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mixed_values, max_size=14), st.integers(min_value=1, max_value=9))
def test_fast_path_and_exact_path_agree_bit_for_bit(values: list[bytes | None], chunk_size: int) -> None:
    exact = _decode(values, NAMES, chunk_size=chunk_size, use_fast_path=False)
    assert _comparable(_decode(values, NAMES, chunk_size=chunk_size)) == _comparable(exact)
    assert _comparable(decode_batch(values, NAMES)) == _comparable(exact)
    # ... and decoding the batch is decoding each message alone, one after the other.
    assert _comparable(decode_batch(values, NAMES)) == _concatenated([decode_batch([v], NAMES) for v in values])


def test_a_large_mixed_batch_matches_the_exact_path() -> None:
    rng = np.random.default_rng(0)
    values: list[bytes | None] = []
    for i in range(1500):
        row = rng.normal(size=3).tolist()
        kind = i % 50
        if kind == 7:
            values.append(b'{"event_id": "cut')
        elif kind == 19:
            values.append(orjson.dumps(event(i, features={"bytes_in": "1.5", "bytes_out": 2, "duration": 3})))
        elif kind == 23:
            values.append(None)
        else:
            features: object = row if i % 2 else dict(zip(NAMES, row))
            values.append(orjson.dumps(event(i, features=features)))
    batch = decode_batch(values, NAMES)
    assert _comparable(batch) == _comparable(_decode(values, NAMES, chunk_size=7, use_fast_path=False))
    assert len(batch.rejects) == 60 and len(batch) == 1440
    assert batch.X[batch.event_ids.index("e19")].tolist() == [1.5, 2.0, 3.0]  # a numeric string, pydantic's lax float


def test_array_features_must_have_the_manifests_length() -> None:
    values = [orjson.dumps(event(0, features=[1.5, 2, 3])), orjson.dumps(event(1, features=[1, 2, 3, 4])),
              orjson.dumps(event(2, features=[]))]
    batch = decode_batch(values, NAMES)
    assert batch.X.tolist() == [[1.5, 2.0, 3.0]]
    assert [(r.index, r.stage, r.error_class) for r in batch.rejects] == [
        (1, "features", "ValueError"), (2, "features", "ValueError")]
    assert "expected 3 feature values, got 4" in batch.rejects[0].message
    assert "feature_names, in that order" in batch.rejects[0].message
    assert "expected 3 feature values, got 0" in batch.rejects[1].message


def test_mapping_in_another_order_with_extra_names_is_read_by_name() -> None:
    values = [orjson.dumps(event(i, features={"duration": 3.0, "zz": -1, "bytes_out": 2.0, "bytes_in": float(i)}))
              for i in range(40)]
    batch = decode_batch(values, NAMES)
    assert batch.rejects == []
    assert batch.X[:2].tolist() == [[0.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    bad_extra = orjson.dumps(event(40, features={"bytes_in": 1, "bytes_out": 2, "duration": 3, "zz": [1]}))
    reject = decode_batch([*values, bad_extra], NAMES).rejects[0]
    assert (reject.index, reject.stage) == (40, "validate") and "features.zz" in reject.message


def test_ints_round_as_pydantic_rounds_them_and_strings_take_pydantics_rules() -> None:
    # 2**60 + 2**36 + 1 as float64 is a float32 tie that rounds down; straight to float32 it rounds up.
    tricky = 2**60 + 2**36 + 1
    arrays = [orjson.dumps(event(i, features=[tricky, 1, 2])) for i in range(20)]
    mappings = [orjson.dumps(event(i, features={"bytes_in": tricky, "bytes_out": 1, "duration": 2})) for i in range(20)]
    # "١٢" (Arabic-Indic digits) is a number to numpy and Python's float() but not to pydantic.
    mappings.append(orjson.dumps(event(20, features={"bytes_in": "\u0661\u0662", "bytes_out": 1, "duration": 2})))
    for values in (arrays, mappings):
        batch = decode_batch(values, NAMES)
        assert batch.X[:, 0].tolist() == [float(np.float32(float(tricky)))] * 20
    assert [(r.index, r.stage) for r in batch.rejects] == [(20, "validate")]
    assert "features.bytes_in: Input should be a valid number" in batch.rejects[0].message


def _two_events() -> bytes:
    return orjson.dumps(event(8)) + b"," + orjson.dumps(event(9))


@pytest.mark.parametrize(
    "smuggler",
    [b'{"a":1},{"b":2}', b"", b"1,2", b"   ", b",", _two_events(), b"[" + orjson.dumps(event(8)),
     orjson.dumps(event(8))[:-1] + b',"x":[1'],
)
def test_a_message_that_is_not_one_json_value_cannot_corrupt_the_batch(smuggler: bytes) -> None:
    values = [orjson.dumps(event(0)), smuggler, orjson.dumps(event(2)), b"]}", orjson.dumps(event(4))]
    batch = decode_batch(values, NAMES)
    assert batch.event_ids == ["e0", "e2", "e4"]
    assert batch.indices.tolist() == [0, 2, 4]
    assert [(r.index, r.stage) for r in batch.rejects] == [(1, "decode"), (3, "decode")]
    np.testing.assert_array_equal(batch.X[:, 0], [0, 20, 40])


def test_three_messages_that_would_balance_in_a_joined_array_stay_three_rejects() -> None:
    # Joined with commas these make three valid-looking elements out of three broken messages:
    # the first opens a list the second closes, the third holds two events.
    opener = orjson.dumps(event(0))[:-1] + b',"x":[0'
    closer = b'{"y":1}]}'
    two = _two_events()
    values = [opener, closer, two, orjson.dumps(event(3))]
    batch = decode_batch(values, NAMES)
    assert batch.event_ids == ["e3"] and batch.indices.tolist() == [3]
    assert [(r.index, r.stage) for r in batch.rejects] == [(0, "decode"), (1, "decode"), (2, "decode")]


@pytest.mark.parametrize("field", sorted(set(Event.model_fields) - {"features"}))
@pytest.mark.parametrize("value", [{"a": 1}, "x" * 300, "", None], ids=["object", "long", "empty", "null"])
def test_fast_path_validates_every_header_field_as_the_event_model_does(field: str, value: object) -> None:
    """The fast path validates headers with a copy of Event's field types (not the model): a field or
    a rule that did not carry over would let it accept a header that Event refuses."""
    message = orjson.dumps(event(1, **{field: value}))
    try:
        Event.model_validate_json(message)
        model_accepts = True
    except ValueError:  # pydantic's ValidationError
        model_accepts = False
    batch = decode_batch([message], NAMES)
    assert (batch.rejects == []) == model_accepts, batch.rejects
    assert _comparable(batch) == _comparable(_decode([message], NAMES, chunk_size=1, use_fast_path=False))
    if not model_accepts:
        assert batch.rejects[0].stage == "validate" and field in batch.rejects[0].message


def test_fast_path_headers_mirror_the_event_model() -> None:
    # The fast path's header type is derived from Event's fields; a validator or a model-wide
    # setting would not carry over.
    decorators = Event.__pydantic_decorators__
    assert not (decorators.validators or decorators.field_validators or decorators.model_validators)
    assert set(Event.model_config) <= {"extra", "frozen"}
