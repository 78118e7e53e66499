"""trainer/store.py without a Redis server: the row format, the key layout, what a feature write queues,
LabelSet's bookkeeping and the held-back split. The Lua scripts and reads run against the real Redis in
tests/integration (test_registry.py's label-store tests, test_label_loop.py)."""
from __future__ import annotations

import numpy as np
import pytest
import redis

from protoguard.trainer.store import (
    FeatureStore,
    LabelSet,
    LabelStore,
    TrafficReservoir,
    is_held_back,
    pack_rows,
    unpack_rows,
)


# ---------------------------------------------------------------- rows: event_id NUL float32 bytes
def test_rows_round_trip_ids_and_float32_values() -> None:
    ids = ["e0", "évènement-1", "", "a:b:c"]
    X = np.arange(12, dtype=np.float64).reshape(3, 4).T[:, ::-1] / 3  # float64, not contiguous
    packed = pack_rows(ids, X)
    assert [p.split(b"\x00", 1)[0].decode() for p in packed] == ids
    assert all(len(p) == len(eid.encode()) + 1 + 4 * 3 for p, eid in zip(packed, ids))
    got_ids, got_X = unpack_rows(packed, 3)
    assert got_ids == ids
    assert got_X.dtype == np.float32 and got_X.shape == (4, 3)
    np.testing.assert_array_equal(got_X, X.astype(np.float32))
    got_X[0, 0] = -1.0  # the trainer gets its own writable array, not a view of Redis' bytes


def test_rows_of_another_feature_width_are_skipped() -> None:
    three = pack_rows(["old-1", "old-2"], np.ones((2, 3), np.float32))
    four = pack_rows(["new-1"], np.full((1, 4), 2.0, np.float32))
    ids, X = unpack_rows([three[0], four[0], three[1], b"no-separator"], 4)
    assert ids == ["new-1"] and X.tolist() == [[2.0, 2.0, 2.0, 2.0]]
    ids, X = unpack_rows([], 4)
    assert ids == [] and X.shape == (0, 4) and X.dtype == np.float32


# ---------------------------------------------------------------- keys and construction
def test_stores_are_built_without_touching_redis_and_keep_to_their_prefix(offline: redis.Redis) -> None:
    reservoir = TrafficReservoir(offline, prefix="t1", capacity=5)
    labels = LabelStore(offline, prefix="t1")
    features = FeatureStore(offline, prefix="t1")
    # the scorers' shared position counter: tests/fixtures/pipeline.py and stream/state_writer.py read it by name
    assert reservoir.counter_key == "t1:reservoir:seen"
    assert (reservoir.pool_key, reservoir.positions_key) == ("t1:reservoir:pool", "t1:reservoir:positions")
    label_keys = [labels.meta_key, labels.features_key, labels.seq_key, labels.order_key, labels.trained_key,
                  labels.trusted_key, labels.quarantine_key, labels.disagreement_key]
    assert label_keys == [f"t1:labels:{part}" for part in
                          ("meta", "features", "seq", "order", "trained_seq", "trusted", "quarantine", "disagreement")]
    assert features.prefix == "t1:features"
    other = LabelStore(offline, prefix="t2")
    assert not set(label_keys) & {other.meta_key, other.seq_key, other.trained_key}


def test_a_feature_write_is_one_script_call_into_its_hour_bucket(offline: redis.Redis) -> None:
    store = FeatureStore(offline, prefix="t", ttl_s=7200)
    X = np.arange(6, dtype=np.float64).reshape(2, 3)
    pipe = offline.pipeline(transaction=False)
    store.queue_write(pipe, ["a", "b"], X, now=5 * 3600 + 3599.5)
    assert len(pipe.command_stack) == 1
    command, _sha, n_keys, key, *args = pipe.command_stack[0][0]
    assert (command, n_keys, key) == ("EVALSHA", 1, "t:features:5")
    # ids joined by newlines, the float32 matrix, bytes per row, and a TTL one bucket longer than ttl_s
    assert args == [b"a\nb", X.astype(np.float32).tobytes(), 12, 7200 + 3600]
    store.queue_write(pipe, [], X[:0], now=0)
    assert len(pipe.command_stack) == 1  # nothing queued for an empty batch


@pytest.mark.parametrize("ids", [["a\nb", "c"], ["", "c"]], ids=["newline", "empty"])
def test_ids_the_script_cannot_split_are_written_row_by_row(offline: redis.Redis, ids: list[str]) -> None:
    store = FeatureStore(offline, prefix="t", ttl_s=3600)
    X = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    pipe = offline.pipeline(transaction=False)
    store.queue_write(pipe, ids, X, now=7200.0)
    (hset, _), (expire, _) = pipe.command_stack
    assert hset == ("HSET", "t:features:2", ids[0], X[0].tobytes(), ids[1], X[1].tobytes())
    assert expire == ("EXPIRE", "t:features:2", 3600 + 3600)


# ---------------------------------------------------------------- the held-back split and LabelSet
#: is_held_back(f"ev-{i}", 0.5) for i in 0..15 (blake2b of the id; changing it reshuffles the held-back set)
HELD_BACK_AT_HALF = [False, True, True, True, False, False, True, False, False, True, True, True, True, True, False,
                     True]


def test_the_held_back_split_is_the_same_in_every_release() -> None:
    """The split decides which labels no model trains on; if the hash changed, a champion trained under
    the old split would be measured on labels it trained on. These values pin it."""
    ids = [f"ev-{i}" for i in range(16)]
    assert [is_held_back(e, 0.5) for e in ids] == HELD_BACK_AT_HALF
    assert not any(is_held_back(e, 0.0) for e in ids) and all(is_held_back(e, 1.0) for e in ids)
    # a larger fraction only adds events to the held-back set, never moves one out
    for e in ids:
        assert not is_held_back(e, 0.2) or is_held_back(e, 0.6)


def test_a_subset_keeps_every_per_label_field_with_its_event() -> None:
    n = 6
    labels = LabelSet(event_ids=[f"e{i}" for i in range(n)], y=np.array([1, 0, 1, 0, 1, 0]),
                      X=np.arange(2 * n, dtype=np.float32).reshape(n, 2), seq=40,
                      sources=["alert", "audit", "manual", "alert", "audit", "manual"],
                      analysts=[f"a{i}" for i in range(n)], change_seq=np.array([1, 9, 3, 12, 5, 11]),
                      is_pinned=np.array([0, 0, 1, 0, 0, 0], bool), is_quarantined=np.array([0, 0, 0, 1, 0, 0], bool),
                      trained_seq=8)
    assert labels.is_new.tolist() == [False, True, False, True, False, True]
    assert labels.is_trusted.tolist() == [False, True, True, False, True, False]
    picked = labels.subset(np.array([0, 1, 0, 1, 0, 1], bool))
    assert picked.event_ids == ["e1", "e3", "e5"]
    assert picked.y.tolist() == [0, 0, 0] and picked.X[:, 0].tolist() == [2.0, 6.0, 10.0]
    assert picked.sources == ["audit", "alert", "manual"] and picked.analysts == ["a1", "a3", "a5"]
    assert picked.change_seq.tolist() == [9, 12, 11]
    assert picked.is_quarantined.tolist() == [False, True, False] and not picked.is_pinned.any()
    assert (picked.seq, picked.trained_seq) == (40, 8)
    assert labels.new_untrusted().event_ids == ["e1", "e5"]  # e3 is new but quarantined


def test_a_label_set_built_from_ids_alone_is_manual_old_and_neither_pinned_nor_quarantined() -> None:
    labels = LabelSet(event_ids=["x", "y"], y=np.array([1, 0]), X=np.zeros((2, 3), np.float32), seq=2)
    assert labels.sources == ["manual", "manual"] and labels.analysts == ["", ""]
    assert labels.change_seq.tolist() == [0, 0] and not labels.is_new.any()
    assert not labels.is_pinned.any() and not labels.is_quarantined.any() and not labels.is_trusted.any()
    empty = LabelSet(event_ids=[], y=np.zeros(0, np.int64), X=np.zeros((0, 3), np.float32), seq=0)
    assert empty.split(0.5)[0].event_ids == [] and empty.trusted().X.shape == (0, 3)
