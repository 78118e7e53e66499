"""ModelWatcher: picks up a newly promoted model between batches, never in the middle of one.

Pub/sub tells us quickly, but it is at-most-once, so the ``current`` pointer is also polled
every ``poll_s``. A version that fails to load (corrupt blob, unknown detector) is logged and
skipped: the scorer keeps serving the model it has.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from ..schemas.errors import ProtoguardError
from ..schemas.manifest import ModelManifest
from ..trainer.detectors.loading import load_detector
from ..trainer.registry import ModelRegistry

__all__ = ["LoadedModel", "ModelWatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    detector: Any
    manifest: ModelManifest


class ModelWatcher:
    def __init__(self, registry: ModelRegistry, *, poll_s: float = 2.0) -> None:
        self.registry = registry
        self.poll_s = poll_s
        self.model: LoadedModel | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._next_poll = 0.0
        self._failed: set[str] = set()

    def start(self) -> None:
        self._pubsub = self.registry.client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.registry.channel)

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()

    def _notified(self) -> bool:
        if self._pubsub is None:
            return False
        try:
            got = False
            while self._pubsub.get_message(timeout=0) is not None:
                got = True
            return got
        except redis.RedisError:
            return False

    def refresh(self, *, force: bool = False) -> bool:
        """Check for a new current version; returns True when the served model changed."""
        now = time.monotonic()
        if not (force or self._notified() or now >= self._next_poll):
            return False
        self._next_poll = now + self.poll_s
        version = self.registry.current_version()
        if version is None or (self.model is not None and version == self.model.version) or version in self._failed:
            return False
        try:
            weights, manifest = self.registry.load(version)
            detector = load_detector(weights, manifest)
        except ProtoguardError as exc:
            self._failed.add(version)
            log.error("cannot load model version %s, keeping %s: %s", version,
                      self.model.version if self.model else "none", exc)
            return False
        previous = self.model.version if self.model else None
        self.model = LoadedModel(version=version, detector=detector, manifest=manifest)
        log.info("serving model version %s (was %s) on %s", version, previous, getattr(detector, "device_", "cpu"))
        return True
