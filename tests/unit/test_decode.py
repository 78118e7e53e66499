"""stream/decode.py: every input ends as an event or a reject, never an exception."""
from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protoguard.stream.decode import decode_batch

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
        (orjson.dumps(event(1, features={"bytes_in": 1e300, "bytes_out": 1, "duration": 1})), "features", "float32"),
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
