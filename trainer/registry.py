"""ModelRegistry: immutable versioned models in Redis, an atomic ``current`` pointer, rollback.

Layout under ``{prefix}:model:`` (all values bytes; nothing is ever unpickled):

- ``seq``                 INCR counter that hands out versions "1", "2", ...
- ``blob:{v}``            safetensors weights, written once (``SET NX``)
- ``manifest:{v}``        the ModelManifest as JSON, written once; its ``weights_sha256`` guards the blob
- ``status``              hash version -> candidate | promoted | rejected | retired (+ ``note:{v}``)
- ``versions``            sorted set of versions by number
- ``current``             the version scorers serve
- ``history``             list of previously current versions, newest first (for rollback)
- ``events``              stream of promotions/rollbacks; ``promoted`` pub/sub channel

Promotion first proves the version can serve: the blob matches the manifest's sha256, the
detector loads from it **on the CPU** (whatever device the manifest was trained on: a CUDA-trained
model must not be refused on a CPU-only trainer, and a model that loads only on CUDA would take
down every CPU scorer) and scores one row of zeros of the manifest's width to a finite number.
Only then does one Lua script flip the pointer, push history, append the event and publish, so a
reader that does ``GET current`` then ``GET blob:{v}`` never sees a half-promoted, missing or
unloadable model. A refused version stays in the registry, unchanged and not current.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import redis

from ..schemas.errors import ModelIntegrityError, RegistryError
from ..schemas.manifest import ModelManifest
from .detectors.base import sha256_hex
from .detectors.loading import load_detector

__all__ = ["ModelRegistry", "Status", "VersionInfo"]

Status = Literal["candidate", "promoted", "rejected", "retired"]

# KEYS: current, history, events, status, blob, manifest; ARGV: version, channel, action, reason, ts
_PROMOTE_LUA = """
if redis.call('EXISTS', KEYS[5]) == 0 or redis.call('EXISTS', KEYS[6]) == 0 then
  return redis.error_reply('unknown version ' .. ARGV[1])
end
local previous = redis.call('GET', KEYS[1])
if previous == ARGV[1] then return previous end
if previous and ARGV[3] == 'promote' then redis.call('LPUSH', KEYS[2], previous) end
if previous then redis.call('HSET', KEYS[4], previous, 'retired') end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], 'promoted')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '1000', '*', 'version', ARGV[1], 'previous', previous or '',
           'action', ARGV[3], 'reason', ARGV[4], 'ts', ARGV[5])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return previous or ''
"""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    status: str
    detector: str
    created_at: str
    parent_version: str | None
    metrics: dict[str, object]
    note: str


class ModelRegistry:
    """Versioned models for one model name; the Redis client is passed in (no I/O in the constructor)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "pg", name: str = "default", keep_versions: int = 10) -> None:
        self.client = client
        self.base = f"{prefix}:model:{name}"
        self.keep_versions = keep_versions
        self._promote = client.register_script(_PROMOTE_LUA)

    # ------------------------------------------------------------------ keys
    def _key(self, part: str) -> str:
        return f"{self.base}:{part}"

    @property
    def channel(self) -> str:
        return self._key("promoted")

    # ------------------------------------------------------------------ writes
    def register(self, weights: bytes, manifest: ModelManifest, *, note: str = "") -> str:
        """Store a new immutable version (status ``candidate``) and return its version string."""
        version = str(self.client.incr(self._key("seq")))
        final = manifest.model_copy(update={"version": version, "weights_sha256": sha256_hex(weights),
                                            "status": "candidate"})
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._key(f"blob:{version}"), weights, nx=True)
        pipe.set(self._key(f"manifest:{version}"), final.model_dump_json().encode(), nx=True)
        pipe.hset(self._key("status"), mapping={version: "candidate", f"note:{version}": note})
        pipe.zadd(self._key("versions"), {version: int(version)})
        blob_ok, manifest_ok, *_ = pipe.execute()
        if not (blob_ok and manifest_ok):
            raise RegistryError(f"version {version} already existed in Redis; registry keys were tampered with")
        return version

    def mark(self, version: str, status: Status, note: str = "") -> None:
        """Record a decision about a version (e.g. ``rejected`` by the promotion gate) with its reason."""
        self._require(version)
        self.client.hset(self._key("status"), mapping={version: status, f"note:{version}": note})

    def promote(self, version: str, *, reason: str = "manual") -> str | None:
        """Make ``version`` current; returns the previous current version.

        Refuses (``RegistryError``/``ModelIntegrityError``, naming the version and why) an unknown
        version, a blob that does not match its manifest, and a model that cannot be loaded on the
        CPU and score a row; ``current`` is then left as it was.
        """
        self.verify(version)
        return self._flip(version, action="promote", reason=reason)

    def verify(self, version: str) -> None:
        """Prove ``version`` can serve: checksum, a CPU load, and a finite score for a row of zeros.

        Costs one model load (well under a second for MNP) per promotion; the scorers would pay it
        anyway, each of them, and a failure there would stop them all.
        """
        weights, manifest = self.load(version)
        cpu_manifest = manifest.model_copy(update={"params": {**manifest.params, "device": "cpu"}}) \
            if "device" in manifest.params else manifest
        try:
            detector = load_detector(weights, cpu_manifest)
            scores = np.asarray(detector.score(np.zeros((1, len(manifest.feature_names)), dtype=np.float32)))
        except Exception as exc:  # noqa: BLE001 - whatever stops the load stops the promotion, with its reason
            raise RegistryError(f"model version {version} cannot be promoted: it does not load and score on the "
                                f"CPU ({type(exc).__name__}: {exc})") from exc
        if scores.shape != (1,) or not np.all(np.isfinite(scores)):
            raise RegistryError(f"model version {version} cannot be promoted: a row of zeros scores "
                                f"{scores.tolist()}, not one finite number")

    def rollback(self, *, reason: str = "rollback") -> str:
        """Return to the previously promoted version; the rolled-back one is marked ``retired``."""
        while True:
            previous = self.client.lpop(self._key("history"))
            if previous is None:
                raise RegistryError("nothing to roll back to: no earlier promoted version")
            version = previous.decode()
            if self.client.exists(self._key(f"blob:{version}")):
                try:
                    self.verify(version)  # it served before, but a rollback target must serve now
                except (RegistryError, ModelIntegrityError):
                    self.client.lpush(self._key("history"), version)  # leave history as it was
                    raise
                self._flip(version, action="rollback", reason=reason)
                return version

    def _flip(self, version: str, *, action: str, reason: str) -> str | None:
        keys = [self._key("current"), self._key("history"), self._key("events"), self._key("status"),
                self._key(f"blob:{version}"), self._key(f"manifest:{version}")]
        try:
            previous = self._promote(keys=keys, args=[version, self.channel, action, reason, f"{time.time():.3f}"])
        except redis.ResponseError as exc:
            raise RegistryError(str(exc)) from exc
        self.prune()
        text = previous.decode() if isinstance(previous, bytes) else str(previous)
        return text or None

    def prune(self) -> list[str]:
        """Delete the blobs of versions beyond the newest ``keep_versions`` that are not current or in history."""
        versions = [v.decode() for v in self.client.zrange(self._key("versions"), 0, -1)]
        if len(versions) <= self.keep_versions:
            return []
        protected = {self.current_version()} | {v.decode() for v in self.client.lrange(self._key("history"), 0, self.keep_versions)}
        doomed = [v for v in versions[: -self.keep_versions] if v not in protected]
        if doomed:
            pipe = self.client.pipeline()
            for v in doomed:
                pipe.delete(self._key(f"blob:{v}"), self._key(f"manifest:{v}"))
                pipe.zrem(self._key("versions"), v)
                pipe.hdel(self._key("status"), v, f"note:{v}")
            pipe.execute()
        return doomed

    # ------------------------------------------------------------------ reads
    def current_version(self) -> str | None:
        value = self.client.get(self._key("current"))
        return value.decode() if value is not None else None

    def manifest(self, version: str) -> ModelManifest:
        raw = self.client.get(self._key(f"manifest:{version}"))
        if raw is None:
            raise RegistryError(f"unknown model version {version!r}; see `protoguard model list`")
        return ModelManifest.model_validate_json(raw)

    def load(self, version: str) -> tuple[bytes, ModelManifest]:
        """Weights and manifest of ``version``, the blob verified against the manifest's sha256."""
        manifest = self.manifest(version)
        blob = self.client.get(self._key(f"blob:{version}"))
        if blob is None:
            raise RegistryError(f"model version {version} has no weights blob (pruned?)")
        if sha256_hex(blob) != manifest.weights_sha256:
            raise ModelIntegrityError(f"model version {version}: weights do not match the manifest's sha256; refusing it")
        return blob, manifest

    def status(self, version: str) -> tuple[str, str]:
        status, note = self.client.hmget(self._key("status"), version, f"note:{version}")
        return (status or b"unknown").decode(), (note or b"").decode()

    def versions(self) -> list[VersionInfo]:
        out = []
        for raw in self.client.zrange(self._key("versions"), 0, -1):
            version = raw.decode()
            manifest = self.manifest(version)
            status, note = self.status(version)
            out.append(VersionInfo(version=version, status=status, detector=manifest.detector,
                                   created_at=manifest.created_at.isoformat(timespec="seconds"),
                                   parent_version=manifest.parent_version, metrics=dict(manifest.metrics), note=note))
        return out

    def _require(self, version: str) -> None:
        if not self.client.exists(self._key(f"manifest:{version}")):
            raise RegistryError(f"unknown model version {version!r}; see `protoguard model list`")
