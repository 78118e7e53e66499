"""ModelWatcher: picks up a newly promoted model between batches, never in the middle of one.

Pub/sub tells us quickly, but it is at-most-once, so the ``current`` pointer is also polled
every ``poll_s``. A version that fails to load (corrupt blob, unknown detector, a device this
machine lacks, anything else) is logged, counted and skipped: the scorer keeps serving the model
it has. The scorer decides its own device (``stream.device``); the device a model was trained on
(its manifest's ``params.device``) is not a fact about this machine.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

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
    def __init__(self, registry: ModelRegistry, *, poll_s: float = 2.0, device: str = "auto") -> None:
        self.registry = registry
        self.poll_s = poll_s
        self.device = device
        self.n_failures = 0
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

    def _on_this_machine(self, manifest: ModelManifest) -> ModelManifest:
        if "device" not in manifest.params:
            return manifest
        return manifest.model_copy(update={"params": {**manifest.params, "device": self.device}})

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
            detector = load_detector(weights, self._on_this_machine(manifest))
        except redis.RedisError:
            raise  # the registry is away, not the model broken: try again on the next poll
        except Exception as exc:  # noqa: BLE001 - any failure to load must leave the served model in place
            self._failed.add(version)
            self.n_failures += 1
            log.error("cannot load model version %s, keeping %s: %s", version,
                      self.model.version if self.model else "none", exc)
            return False
        previous = self.model.version if self.model else None
        self.model = LoadedModel(version=version, detector=detector, manifest=manifest)
        log.info("serving model version %s (was %s) on %s", version, previous, getattr(detector, "device_", "cpu"))
        return True
