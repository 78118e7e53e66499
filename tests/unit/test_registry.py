"""trainer/registry.py without a Redis server: building a registry touches nothing, and its keys and
promotion channel stay inside its prefix and model name. Everything else it does is Redis (the
promotion Lua script, checksums read back from Redis, pruning) and runs against the real Redis in
tests/integration/test_registry.py."""
from __future__ import annotations

import redis

from protoguard.trainer.registry import ModelRegistry


def test_a_registry_is_built_without_redis_and_keeps_to_its_prefix_and_name(offline: redis.Redis) -> None:
    registry = ModelRegistry(offline, prefix="site-a")
    assert registry.base == "site-a:model:default" and registry.keep_versions == 10
    # scorers subscribe to this channel for promotions (stream/reload.py)
    assert registry.channel == "site-a:model:default:promoted"
    for other in (ModelRegistry(offline, prefix="site-b"), ModelRegistry(offline, prefix="site-a", name="hgad")):
        assert other.channel != registry.channel and other.base != registry.base
