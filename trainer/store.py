"""Redis-backed state written by the scorers and read by training: scored-event features and the reservoir.

Owned here (upstream of both ``stream`` and ``trainer``) because the trainer defines what it
needs; the scorer only appends. Every write is one pipeline per micro-batch, never per event.

- **FeatureStore**: the features of every scored event, so that a label arriving later can be
  joined to them. Events are grouped into hourly hashes (``HSET`` of the whole batch + one
  ``EXPIRE``) instead of one key per event: one command per batch, and expiry by bucket.
- **TrafficReservoir**: a uniform reservoir sample (Vitter's algorithm R) of recent unlabelled
  feature vectors, the contaminated pool MNP trains its unlabelled side on. The slot choice runs
  in a Lua script so concurrent scorers share one counter without a race.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import redis

__all__ = ["FeatureStore", "TrafficReservoir", "pack_rows", "unpack_rows"]

_SEP = b"\x00"
#: Bucket width of the feature store: lookups probe ttl/bucket buckets, so an hour keeps that
#: to 168 HMGETs (one pipeline) for a 7-day TTL.
_BUCKET_S = 3600

# KEYS: counter, pool; ARGV: capacity, then per row: uniform u in [0,1), packed row
_RESERVOIR_LUA = """
local capacity = tonumber(ARGV[1])
local n_rows = (#ARGV - 1) / 2
local seen = redis.call('INCRBY', KEYS[1], n_rows) - n_rows
local written = 0
for i = 0, n_rows - 1 do
  local t = seen + i
  local slot = t
  if t >= capacity then slot = math.floor(tonumber(ARGV[2 + 2 * i]) * (t + 1)) end
  if slot < capacity then
    redis.call('HSET', KEYS[2], slot, ARGV[3 + 2 * i])
    written = written + 1
  end
end
return written
"""


def pack_rows(event_ids: Sequence[str], X: npt.NDArray[np.float32]) -> list[bytes]:
    """``event_id NUL float32-bytes`` per row (the id lets training drop events later labelled)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return [eid.encode() + _SEP + row.tobytes() for eid, row in zip(event_ids, X)]


def unpack_rows(values: Sequence[bytes], n_features: int) -> tuple[list[str], npt.NDArray[np.float32]]:
    ids: list[str] = []
    rows: list[bytes] = []
    width = 4 * n_features
    for value in values:
        eid, _, row = value.partition(_SEP)
        if len(row) != width:
            continue  # written under another feature set; not usable for this model
        ids.append(eid.decode())
        rows.append(row)
    X = np.frombuffer(b"".join(rows), dtype=np.float32).reshape(len(rows), n_features).copy()
    return ids, X


class FeatureStore:
    """Features of scored events by event_id, expiring after ``ttl_s``."""

    def __init__(self, client: redis.Redis, *, prefix: str = "pg", ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.prefix = f"{prefix}:features"
        self.ttl_s = ttl_s

    def _bucket(self, ts: float) -> str:
        return f"{self.prefix}:{int(ts // _BUCKET_S)}"

    def queue_write(self, pipe: redis.client.Pipeline, event_ids: Sequence[str], X: npt.NDArray[np.float32],
                    now: float | None = None) -> None:
        """Add this batch's writes to ``pipe`` (the caller executes it once per batch)."""
        if not event_ids:
            return
        key = self._bucket(time.time() if now is None else now)
        X = np.ascontiguousarray(X, dtype=np.float32)
        pipe.hset(key, mapping=dict(zip(event_ids, (row.tobytes() for row in X))))
        pipe.expire(key, self.ttl_s + _BUCKET_S)

    def lookup(self, event_ids: Sequence[str], n_features: int, now: float | None = None) -> dict[str, npt.NDArray[np.float32]]:
        """Features of the given events that are still stored (unknown/expired ids are absent)."""
        if not event_ids:
            return {}
        now = time.time() if now is None else now
        n_buckets = self.ttl_s // _BUCKET_S + 2
        newest = int(now // _BUCKET_S)
        pipe = self.client.pipeline(transaction=False)
        for b in range(newest, newest - n_buckets, -1):
            pipe.hmget(f"{self.prefix}:{b}", list(event_ids))
        found: dict[str, npt.NDArray[np.float32]] = {}
        for values in pipe.execute():
            for eid, value in zip(event_ids, values):
                if value is not None and eid not in found and len(value) == 4 * n_features:
                    found[eid] = np.frombuffer(value, dtype=np.float32).copy()
        return found


class TrafficReservoir:
    """A bounded uniform sample of all traffic the scorers saw (the contaminated training pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "pg", capacity: int = 20_000) -> None:
        self.client = client
        self.counter_key = f"{prefix}:reservoir:seen"
        self.pool_key = f"{prefix}:reservoir:pool"
        self.capacity = capacity
        self._script = client.register_script(_RESERVOIR_LUA)

    def queue_offer(self, pipe: redis.client.Pipeline, event_ids: Sequence[str], X: npt.NDArray[np.float32],
                    rng: np.random.Generator) -> None:
        """Offer a batch to the reservoir inside ``pipe`` (one script call per batch)."""
        if not event_ids:
            return
        packed = pack_rows(event_ids, X)
        uniforms = rng.random(len(packed)).tolist()
        args: list[object] = [self.capacity]
        for u, row in zip(uniforms, packed):
            args += [repr(u), row]
        self._script(keys=[self.counter_key, self.pool_key], args=args, client=pipe)

    def sample(self, n_features: int) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Everything currently in the pool (at most ``capacity`` rows)."""
        values = self.client.hvals(self.pool_key)
        return unpack_rows(values, n_features)

    def n_seen(self) -> int:
        return int(self.client.get(self.counter_key) or 0)
