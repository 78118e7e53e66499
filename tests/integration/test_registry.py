"""ModelRegistry on the real Redis: immutable versions, atomic promotion, refusals, rollback, pruning."""
from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis

from protoguard.schemas.errors import ModelIntegrityError, RegistryError
from protoguard.schemas.manifest import ModelManifest
from protoguard.trainer.registry import ModelRegistry
from protoguard.trainer.store import LabelStore, TrafficReservoir, unpack_rows
from tests.fixtures.pipeline import fit_tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_model() -> tuple[bytes, ModelManifest]:
    """A real (tiny) MNP: promotion loads and scores the candidate, so fake bytes no longer pass."""
    weights, manifest, _ = fit_tiny_model(0)
    return weights, manifest


def test_promote_flip_publish_and_rollback(redis_client: redis.Redis, unique, tiny_model) -> None:
    registry = ModelRegistry(redis_client, prefix=unique("reg"), keep_versions=3)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(registry.channel)
    v1 = registry.register(*tiny_model)
    v2 = registry.register(*tiny_model)
    assert (v1, v2) == ("1", "2")
    assert registry.current_version() is None
    registry.promote(v1)
    assert registry.promote(v2) == v1
    assert registry.current_version() == v2
    assert registry.status(v1)[0] == "retired" and registry.status(v2)[0] == "promoted"
    published = []
    for _ in range(10):  # get_message returns None for the (ignored) subscribe confirmation
        message = pubsub.get_message(timeout=1)
        if message:
            published.append(message["data"])
    assert published == [b"1", b"2"]
    events = redis_client.xrange(f"{registry.base}:events")
    assert [e[1][b"version"] for e in events] == [b"1", b"2"]
    assert registry.rollback() == v1
    assert registry.current_version() == v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    pubsub.close()


def test_unknown_and_corrupt_versions_are_refused(redis_client: redis.Redis, unique, tiny_model) -> None:
    registry = ModelRegistry(redis_client, prefix=unique("reg"))
    with pytest.raises(RegistryError, match="unknown model version '7'"):
        registry.promote("7")
    version = registry.register(*tiny_model)
    redis_client.set(f"{registry.base}:blob:{version}", b"tampered")
    with pytest.raises(ModelIntegrityError, match="do not match the manifest's sha256"):
        registry.promote(version)
    assert registry.current_version() is None


def test_a_model_claiming_cuda_is_verified_on_the_cpu_and_promoted(redis_client: redis.Redis, unique,
                                                                   tiny_model) -> None:
    """The manifest's device is where it was trained, not where it must load: promotion loads on CPU."""
    weights, manifest = tiny_model
    cuda_manifest = manifest.model_copy(update={"params": {**manifest.params, "device": "cuda"}})
    registry = ModelRegistry(redis_client, prefix=unique("reg"))
    version = registry.register(weights, cuda_manifest)
    assert registry.promote(version) is None
    assert registry.current_version() == version
    assert registry.manifest(version).params["device"] == "cuda"  # the manifest itself is not rewritten


def test_a_blob_that_does_not_load_is_refused_and_current_is_unchanged(redis_client: redis.Redis, unique,
                                                                       tiny_model) -> None:
    weights, manifest = tiny_model
    registry = ModelRegistry(redis_client, prefix=unique("reg"))
    good = registry.register(weights, manifest)
    registry.promote(good)
    # Checksum-consistent garbage (what a buggy trainer would register): sha256 passes, loading does not.
    corrupt = registry.register(b"\x00" * 64 + weights[64:], manifest)
    with pytest.raises(RegistryError, match=f"model version {corrupt} cannot be promoted: it does not load"):
        registry.promote(corrupt)
    # Weights of another width than the manifest's features: loads refuse them too.
    narrow = registry.register(weights, manifest.model_copy(update={"feature_names": ["a", "b"]}))
    with pytest.raises(RegistryError, match=f"model version {narrow} cannot be promoted"):
        registry.promote(narrow)
    assert registry.current_version() == good
    assert registry.status(corrupt)[0] == "candidate" and registry.status(good)[0] == "promoted"


def test_old_versions_are_pruned_but_current_and_history_kept(redis_client: redis.Redis, unique, tiny_model) -> None:
    registry = ModelRegistry(redis_client, prefix=unique("reg"), keep_versions=2)
    versions = [registry.register(*tiny_model) for i in range(5)]
    registry.promote(versions[0])
    registry.promote(versions[4])
    kept = {info.version for info in registry.versions()}
    assert versions[0] in kept and versions[4] in kept   # history and current survive
    assert versions[1] not in kept and versions[2] not in kept


def test_label_store_is_idempotent_per_event_and_counts_new_labels(redis_client: redis.Redis, unique) -> None:
    store = LabelStore(redis_client, prefix=unique("lbl"))
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    metas = [orjson.dumps({"label": v}) for v in ("anomaly", "normal", "anomaly")]
    assert store.apply(["a", "b", "c"], metas, X) == ["new", "new", "new"]
    assert store.apply(["a", "b"], metas[:2], X[:2]) == ["unchanged", "unchanged"]  # redelivery
    assert store.n_new() == 3
    store.mark_trained(store.seq())
    assert store.n_new() == 0
    assert store.apply(["b"], [orjson.dumps({"label": "anomaly"})], X[1:2]) == ["replaced"]
    assert store.n_new() == 1
    store.mark_trained(1)  # never moves backwards
    assert store.n_new() == 1
    snap = store.snapshot(4)
    assert sorted(snap.event_ids) == ["a", "b", "c"]
    assert dict(zip(snap.event_ids, snap.y.tolist())) == {"a": 1, "b": 1, "c": 1}
    assert store.snapshot(5).event_ids == []  # rows of another width are not this model's


def test_label_store_keeps_provenance_pins_and_quarantine(redis_client: redis.Redis, unique) -> None:
    store = LabelStore(redis_client, prefix=unique("lbl"))
    X = np.arange(16, dtype=np.float32).reshape(4, 4)
    metas = [orjson.dumps({"label": "anomaly", "source": "alert", "analyst": "ann"}),
             orjson.dumps({"label": "normal", "source": "audit", "analyst": "bob"}),
             orjson.dumps({"label": "normal", "analyst": "ann"}),  # written before labels had a source
             orjson.dumps({"label": "anomaly", "source": "alert", "analyst": "eve"})]
    store.apply(["a", "b", "c", "d"], metas, X)
    store.mark_trained(2)
    assert store.pin(["c"]) == 1 and store.quarantine(["d"]) == 1
    snap = store.snapshot(4)
    by_id = {e: i for i, e in enumerate(snap.event_ids)}
    assert [snap.sources[by_id[e]] for e in "abcd"] == ["alert", "audit", "manual", "alert"]
    assert sorted(snap.trusted().event_ids) == ["b", "c"]          # the audit label and the pinned one
    assert snap.new_untrusted().event_ids == []                      # c is pinned, d already quarantined
    train, held = snap.split(0.5)
    assert sorted(train.event_ids + held.event_ids) == ["a"]
    assert store.pin(["d"]) == 1 and store.quarantined() == []      # pinning vouches: out of quarantine
    store.quarantine(["a"])
    assert store.release(["a"]) == 1 and store.pinned() == ["c", "d"]
    store.add_disagreement(40, 4)
    store.add_disagreement(10, 1)
    assert store.disagreement_history() == (50, 5)


def test_training_rows_come_back_in_a_fixed_order(redis_client: redis.Redis, unique) -> None:
    """A Redis hash iterates in an order set by a per-server hash seed; a seeded retrain must not
    depend on it, so labels come back sorted by event id and the reservoir in slot order."""
    labels = LabelStore(redis_client, prefix=unique("lbl"))
    ids = [f"e{i:03d}" for i in range(200)]
    order = np.random.default_rng(3).permutation(len(ids))
    X = np.arange(4 * len(ids), dtype=np.float32).reshape(len(ids), 4)
    labels.apply([ids[i] for i in order], [orjson.dumps({"label": "normal"})] * len(ids), X[order])
    snap = labels.snapshot(4)
    assert snap.event_ids == sorted(ids)
    assert np.array_equal(snap.X, X)  # each row stayed with its event

    reservoir = TrafficReservoir(redis_client, prefix=unique("res"), capacity=50)
    pipe = redis_client.pipeline(transaction=False)
    reservoir.queue_offer(pipe, ids, X, np.random.default_rng(0))
    pipe.execute()
    first = reservoir.sample(4)
    assert len(first[0]) == 50
    assert reservoir.sample(4)[0] == first[0]
    by_slot = sorted(redis_client.hgetall(reservoir.pool_key).items(), key=lambda item: int(item[0]))
    assert first[0] == unpack_rows([blob for _, blob in by_slot], 4)[0]
