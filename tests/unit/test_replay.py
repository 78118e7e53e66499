"""stream/replay.py: datasets read from npz and CSV, rows encoded as events the scorer's decoder accepts
(keyed by entity, ids and kinds in order), and malformed messages that the decoder rejects, every one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from protoguard.stream.decode import decode_batch
from protoguard.stream.replay import encode_events, load_dataset, malformed_messages

NAMES = ["bytes_in", "bytes_out", "duration"]


def test_npz_round_trips_matrix_labels_names_and_kinds(tmp_path: Path) -> None:
    X = np.arange(12, dtype=np.float64).reshape(4, 3) / 4
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.array([[0], [1], [0], [1]]), feature_names=np.array(NAMES), kinds=np.array(["a", "b", "a", "c"]))
    data = load_dataset(path)
    assert data.X.dtype == np.float32 and np.array_equal(data.X, X.astype(np.float32))
    assert data.y is not None and data.y.dtype == np.int64 and data.y.tolist() == [0, 1, 0, 1]
    assert data.feature_names == NAMES and data.kinds == ["a", "b", "a", "c"]


def test_npz_without_optional_arrays_gets_generated_names_and_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "bare.npz"
    np.savez(path, X=np.zeros((2, 3)))
    data = load_dataset(str(path))  # a str path works as well
    assert data.y is None and data.kinds is None and data.feature_names == ["f0", "f1", "f2"]


def test_csv_label_column_is_split_off_wherever_it_sits_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("bytes_in,label,duration\n1.5,0,2\n\n3,1.0,4.25\n")
    data = load_dataset(path)
    assert data.feature_names == ["bytes_in", "duration"]
    assert data.X.dtype == np.float32 and data.X.tolist() == [[1.5, 2.0], [3.0, 4.25]]
    assert data.y is not None and data.y.tolist() == [0, 1] and data.kinds is None
    unlabelled = tmp_path / "u.csv"
    unlabelled.write_text("a,b\n1,2\n")
    assert load_dataset(unlabelled).y is None and load_dataset(unlabelled).feature_names == ["a", "b"]


def test_encoded_events_are_keyed_by_entity_numbered_from_start_and_decode_to_the_same_matrix() -> None:
    X = np.array([[1.0, 2.0, 0.5], [3.0, 4.0, 0.25], [5.0, 6.0, 0.125]], dtype=np.float32)
    encoded = list(encode_events(X, NAMES, id_prefix="r", start=7, n_entities=2, kinds=["x", "y", "z"], ts=1_700_000_000.0))
    keys, values, ids = zip(*encoded)
    assert ids == ("r-7", "r-8", "r-9")
    assert keys == (b"host-1", b"host-0", b"host-1")  # one entity, one key, one partition
    first = orjson.loads(values[0])
    assert first["entity"] == "host-1" and first["ts"] == 1_700_000_000.0 and first["features"]["duration"] == 0.5
    batch = decode_batch(list(values), NAMES)
    assert batch.rejects == [] and batch.event_ids == list(ids)
    assert np.array_equal(batch.X, X) and batch.kinds == ["x", "y", "z"] and batch.entities == ["host-1", "host-0", "host-1"]


def test_events_without_kinds_carry_no_kind_field() -> None:
    (_, value, _), = encode_events(np.ones((1, 3), np.float32), NAMES, ts=0.0)
    assert "kind" not in orjson.loads(value)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_malformed_message_is_rejected_by_the_decoder_and_the_mix_is_seeded(seed: int) -> None:
    bad = malformed_messages(40, NAMES, seed=seed)
    assert len(bad) == 40 and bad == malformed_messages(40, NAMES, seed=seed)
    batch = decode_batch(bad, NAMES)
    assert len(batch) == 0 and [r.index for r in batch.rejects] == list(range(40))
    assert {r.stage for r in batch.rejects} >= {"decode", "validate"}
    assert malformed_messages(40, NAMES, seed=seed + 10) != bad
