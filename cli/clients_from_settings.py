"""Build the clients every long-running command needs from Settings (read once, at the CLI)."""
from __future__ import annotations

import redis

from ..schemas.settings import Settings
from ..stream.clients import build_redis
from ..trainer.registry import ModelRegistry

__all__ = ["registry_from_settings"]


def registry_from_settings(settings: Settings, client: redis.Redis | None = None) -> ModelRegistry:
    return ModelRegistry(client or build_redis(settings.redis.url), prefix=settings.redis.prefix,
                         keep_versions=settings.trainer.keep_versions)
