"""stream/_rowscan.c, the decoder's native path: the same answer as the Python paths, bit for bit.

The scanner only ever says "yes, and here are the values" or "no, ask Python"; these tests
check that every yes is the answer the exact path gives, on number literals written every way
JSON allows and on messages laid out every way a producer might (member order, whitespace,
duplicate or escaped keys, ``features`` nested elsewhere).
"""
from __future__ import annotations

import struct

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protoguard.stream import decode
from protoguard.stream.decode import NATIVE_SCANNER, _decode, decode_batch

from .test_decode import _comparable

NAMES = ["bytes_in", "bytes_out", "duration"]


def test_the_native_scanner_is_built_by_the_install() -> None:
    # pip install builds stream/_rowscan.c; without it the decoder still works, at a third of the speed.
    assert NATIVE_SCANNER


digits = st.text("0123456789", min_size=1, max_size=22)
number_literals = st.one_of(
    st.builds(lambda sign, whole, frac, exp: f"{sign}{whole.lstrip('0') or '0'}{frac}{exp}",
              st.sampled_from(["", "-"]), digits,
              st.one_of(st.just(""), digits.map(lambda d: "." + d)),
              st.one_of(st.just(""), st.builds(lambda e, s, n: f"{e}{s}{n}", st.sampled_from("eE"),
                                               st.sampled_from(["", "+", "-"]), st.integers(0, 40)))),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr),  # float32 data printed as float64
    st.integers(-(10**18), 10**18).map(str),
    st.sampled_from(["0", "-0", "-0.0", "0e5", "1E+2", "5e-324", "1e308", "1.7976931348623157e308", "1e309",
                     "2.2250738585072014e-308", "9007199254740993", "123456789012345678901234567890"]),
)


def _python_value(literal: str) -> float:
    """What orjson + pydantic make of a JSON number: an int first when it has no fraction or exponent."""
    return float(literal) if any(c in literal for c in ".eE") else float(int(literal))


@settings(max_examples=300, deadline=None)
@given(st.lists(number_literals, min_size=1, max_size=40))
def test_native_numbers_are_pythons_numbers_bit_for_bit(literals: list[str]) -> None:
    messages = [b'{"features":[' + literal.encode() + b'],"event_id":"x"}' for literal in literals]
    rows = np.full((len(messages), 1), np.nan)
    heads = decode._rowscan.scan_rows(messages, None, 1, rows)
    for literal, head, value in zip(literals, heads, rows[:, 0]):
        if head is None:
            continue  # left to Python: overflow, underflow, more than 18 integer digits
        assert head == b'{"event_id":"x"}'
        assert struct.pack("<d", value) == struct.pack("<d", _python_value(literal)), literal


def test_ordinary_numbers_are_taken_by_the_native_path() -> None:
    # A scanner that said "ask Python" to everything would pass the test above.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-8, 8, 500),
                             rng.normal(size=500).astype(np.float32).astype(np.float64), rng.integers(-999, 999, 200)])
    messages = [b'{"features":[' + orjson.dumps(float(v)) + b"]}" for v in values]
    rows = np.empty((len(messages), 1))
    heads = decode._rowscan.scan_rows(messages, None, 1, rows)
    assert all(h == b"{}" for h in heads)
    assert rows[:, 0].tolist() == values.tolist()


ws = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
good_literals = st.one_of(st.floats(-1e6, 1e6).map(repr), st.integers(-1000, 1000).map(str),
                          st.sampled_from(["0.0", "-0", "1e2", "2.50", "1E-3"]))


def _features_text(draw: st.DrawFn) -> str:
    values = [draw(good_literals) for _ in NAMES]
    kind = draw(st.sampled_from(["array", "mapping", "mapping", "reordered", "extra", "short", "escaped_name",
                                 "string_value", "nested"]))
    w = draw(ws)
    names = list(NAMES)
    if kind == "array":
        return "[" + w + ("," + w).join(values) + w + "]"
    if kind == "reordered":
        names = names[::-1]
    if kind == "short":
        names, values = names[:2], values[:2]
    if kind == "escaped_name":
        names = [names[0].replace("b", "\\u0062", 1), *names[1:]]
    if kind == "string_value":
        values[1] = '"' + values[1] + '"'
    if kind == "nested":
        values[2] = "[" + values[2] + "]"
    pairs = [f'"{n}"{w}:{w}{v}' for n, v in zip(names, values)]
    if kind == "extra":
        pairs.append('"other":1')
    return "{" + w + ("," + w).join(pairs) + w + "}"


@st.composite
def laid_out_messages(draw: st.DrawFn) -> bytes:
    i = draw(st.integers(0, 99))
    members = [("event_id", f'"e{i}"'), ("ts", draw(st.sampled_from(["1700000000", "1.7e9", '"2026-01-02T03:04:05Z"']))),
               ("entity", '"h1"'), ("features", _features_text(draw))]
    if draw(st.booleans()):
        members.append(("kind", '"dos"'))
    extra = draw(st.sampled_from(["none", "duplicate", "escaped_key", "nested_features", "object", "escaped_string"]))
    if extra == "duplicate":
        members.append(("features", _features_text(draw)))
    elif extra == "escaped_key":
        members.append(("feat\\u0075res", _features_text(draw)))
    elif extra == "nested_features":
        members.append(("meta", '{"features":[1,2,3],"x":[{"y":"}"}]}'))
    elif extra == "object":
        members.append(("meta", '{"a":[1,{"b":null}],"c":"\\"quoted\\" ]}"}'))
    elif extra == "escaped_string":
        members[2] = ("entity", '"h\\u00e91\\n"')
    order = draw(st.permutations(members))
    w = draw(ws)
    body = ("," + w).join(f'"{k}"{w}:{w}{v}' for k, v in order)
    text = draw(ws) + "{" + w + body + w + "}" + draw(ws)
    damage = draw(st.sampled_from(["none"] * 6 + ["trailing_comma", "cut", "tail"]))
    if damage == "trailing_comma":
        text = text.rstrip()[:-1] + ",}"
    elif damage == "cut":
        text = text[: len(text) * 2 // 3]
    elif damage == "tail":
        text += " {}"
    return text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(laid_out_messages(), min_size=1, max_size=12), st.integers(1, 5))
def test_native_path_agrees_with_the_python_paths_on_any_layout(values: list[bytes], native_chunk: int) -> None:
    exact = _comparable(_decode(values, NAMES, chunk_size=4, use_fast_path=False))
    assert _comparable(_decode(values, NAMES, chunk_size=4, use_native=False)) == exact
    assert _comparable(_decode(values, NAMES, chunk_size=4, native_chunk=native_chunk)) == exact
    assert _comparable(decode_batch(values, NAMES)) == exact


def test_native_path_reads_features_in_any_member_position() -> None:
    rows = [[1.5, -2.0, 3e-5], [0.0, 7.0, 8.25]]
    first = b'{"features":{"bytes_in":1.5,"bytes_out":-2,"duration":3e-5},"event_id":"a","ts":1,"entity":"h"}'
    last = b' { "event_id" : "b" , "ts" : 1 , "entity" : "h" , "features" : [ 0 , 7 , 8.25 ] } '
    batch = decode_batch([first, last], NAMES)
    assert batch.rejects == [] and batch.event_ids == ["a", "b"]
    assert batch.X.tolist() == np.asarray(rows, dtype=np.float32).tolist()
    rows64 = np.empty((2, 3))
    heads = decode._rowscan.scan_rows([first, last], tuple(n.encode() for n in NAMES), 3, rows64)
    assert heads == [b'{"event_id":"a","ts":1,"entity":"h"}', b' { "event_id" : "b" , "ts" : 1 , "entity" : "h" } ']


def test_names_json_would_escape_leave_mappings_to_python() -> None:
    names = ['say "hi"', "back\\slash"]
    message = orjson.dumps({"event_id": "a", "ts": 1, "entity": "h", "features": {names[0]: 1, names[1]: 2}})
    assert decode._scanner_names(tuple(names)) is None
    batch = decode_batch([message], names)
    assert batch.X.tolist() == [[1.0, 2.0]] and batch.rejects == []
