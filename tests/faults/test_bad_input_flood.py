"""100,000 generated bad messages mixed with valid events: every one ends as a dead letter, every
valid event is scored, and the scorer stays up.

Hypothesis generates up to 500 distinct bad messages (arbitrary bytes, JSON of the wrong shape,
wrong types, truncated events, values JSON cannot carry); they are repeated to 100,000 messages,
interleaved with 20,000 valid events, on the real stack.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protoguard.stream.clients import build_producer
from protoguard.stream.decode import decode_batch
from tests.faults.test_scorer_faults import _install, _start, check_invariant
from tests.fixtures.pipeline import FEATURES, Pipeline, synthetic_traffic

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

N_KINDS, N_BAD = 500, 100_000

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                     st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=12)


def _valid_event(i: int) -> dict[str, object]:
    return {"event_id": f"gen-{i}", "ts": 1_700_000_000, "entity": "h", "features": {n: 1.0 for n in FEATURES}}


@st.composite
def bad_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "field", "truncated", "literal"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return orjson.dumps(draw(_json))
    if kind == "field":  # a valid event with one field replaced or removed
        event = _valid_event(draw(st.integers(0, 10**6)))
        name = draw(st.sampled_from(["event_id", "ts", "entity", "features", "kind", "schema_version"]))
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(_json)
        return orjson.dumps(event)
    if kind == "truncated":
        raw = orjson.dumps(_valid_event(draw(st.integers(0, 10**6))))
        return raw[: draw(st.integers(0, len(raw) - 1))]
    name = draw(st.sampled_from(FEATURES))
    literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", '"x"', "[]", "{}", "null"]))
    body = ",".join(f'"{n}":{literal if n == name else "1.0"}' for n in FEATURES)
    return ('{"event_id":"e","ts":1,"entity":"h","features":{' + body + "}}").encode()


def _is_rejected(message: bytes) -> bool:
    return len(decode_batch([message], FEATURES)) == 0


def _generate_kinds() -> list[bytes]:
    """Distinct bad messages from hypothesis (each example is one fresh draw; derandomized, so the
    flood is the same on every run)."""
    found: dict[bytes, None] = {}

    @settings(max_examples=1500, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(bad_messages().filter(_is_rejected))
    def draw(message: bytes) -> None:
        found.setdefault(message, None)

    draw()
    return list(found)[:N_KINDS]


def test_a_flood_of_generated_bad_messages_is_dead_lettered_and_nothing_is_lost(pipeline: Pipeline,
                                                                               tmp_path: Path) -> None:
    kinds = _generate_kinds()
    assert len(kinds) >= 300 and all(_is_rejected(k) for k in kinds)
    served = _install(pipeline, seed=40)
    X, _ = synthetic_traffic(20_000, seed=41)
    producer = build_producer(pipeline.stack.bootstrap_servers, linger_ms=20)
    ids: list[str] = []
    rng = np.random.default_rng(0)
    bad = [kinds[i] for i in rng.permutation(np.resize(np.arange(len(kinds)), N_BAD))]
    per_event = len(bad) // len(X)
    for i, row in enumerate(X):
        event = {"event_id": f"ok-{i}", "ts": 1_700_000_000, "entity": f"h{i % 7}", "features": dict(zip(FEATURES, row.tolist()))}
        producer.send(pipeline.events, key=f"h{i % 7}".encode(), value=orjson.dumps(event))
        ids.append(f"ok-{i}")
        for message in bad[i * per_event:(i + 1) * per_event]:
            producer.send(pipeline.events, value=message)
    for message in bad[len(X) * per_event:]:
        producer.send(pipeline.events, value=message)
    producer.flush()
    producer.close()
    scorer = _start(pipeline, tmp_path)
    stats = check_invariant(pipeline, served, X, ids, len(bad), scorer, timeout_s=600)
    assert stats["distinct_dead_letters"] == N_BAD
