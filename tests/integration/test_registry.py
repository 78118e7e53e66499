"""ModelRegistry on the real Redis: immutable versions, atomic promotion, refusals, rollback, pruning."""
from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis

from protoguard.schemas.errors import ModelIntegrityError, RegistryError
from protoguard.schemas.manifest import ModelManifest
from protoguard.trainer.registry import ModelRegistry
from protoguard.trainer.store import LabelStore

pytestmark = pytest.mark.integration


def _manifest() -> ModelManifest:
    return ModelManifest(detector="mnp", feature_names=["a", "b"], threshold=0.5)


def test_promote_flip_publish_and_rollback(redis_client: redis.Redis, unique) -> None:
    registry = ModelRegistry(redis_client, prefix=unique("reg"), keep_versions=3)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(registry.channel)
    v1 = registry.register(b"weights-1", _manifest())
    v2 = registry.register(b"weights-2", _manifest())
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


def test_unknown_and_corrupt_versions_are_refused(redis_client: redis.Redis, unique) -> None:
    registry = ModelRegistry(redis_client, prefix=unique("reg"))
    with pytest.raises(RegistryError, match="unknown model version '7'"):
        registry.promote("7")
    version = registry.register(b"good weights", _manifest())
    redis_client.set(f"{registry.base}:blob:{version}", b"tampered")
    with pytest.raises(ModelIntegrityError, match="do not match the manifest's sha256"):
        registry.promote(version)
    assert registry.current_version() is None


def test_old_versions_are_pruned_but_current_and_history_kept(redis_client: redis.Redis, unique) -> None:
    registry = ModelRegistry(redis_client, prefix=unique("reg"), keep_versions=2)
    versions = [registry.register(f"w{i}".encode(), _manifest()) for i in range(5)]
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
