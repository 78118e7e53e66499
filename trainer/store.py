"""Redis-backed state written by the scorers and read by training: scored-event features and the reservoir.

Owned here (upstream of both ``stream`` and ``trainer``) because the trainer defines what it
needs; the scorer only appends. Every write is one pipeline per micro-batch, never per event.

- **FeatureStore**: the features of every scored event, so that a label arriving later can be
  joined to them. Events are grouped into hourly hashes (``HSET`` of the whole batch + one
  ``EXPIRE``) instead of one key per event: one command per batch, and expiry by bucket.
- **LabelStore**: analysts' labels joined with their events' features, one entry per event_id
  (a later label replaces an earlier one), plus a change counter the trainer's label trigger reads,
  the operator's pinned (trusted) and quarantined event ids, and the label stream's historical
  disagreement with the champion (what the gate's poisoning alarm compares new labels against).
- **TrafficReservoir**: a uniform reservoir sample (Vitter's algorithm R) of recent unlabelled
  feature vectors, the contaminated pool MNP trains its unlabelled side on. Scorers share one
  position counter (``INCRBY`` reserves each batch's range); each scorer decides on its own which
  of its rows are kept (``reservoir_sampling``: skip counting, work proportional to the rows kept)
  and sends only those.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import orjson
import redis

from .reservoir_sampling import reservoir_picks

__all__ = ["FeatureStore", "LabelSet", "LabelStore", "LabelWrite", "TrafficReservoir", "is_held_back", "pack_rows",
           "unpack_rows"]

_SEP = b"\x00"
#: Bucket width of the feature store: lookups probe ttl/bucket buckets, so an hour keeps that
#: to 168 HMGETs (one pipeline) for a 7-day TTL.
_BUCKET_S = 3600

# KEYS: bucket hash; ARGV: ids joined by newlines, the rows' float32 bytes, bytes per row, TTL.
# HSET takes up to 256 field/value pairs per call (Lua's unpack has a stack limit).
_WRITE_FEATURES_LUA = """
local ids, matrix, width = ARGV[1], ARGV[2], tonumber(ARGV[3])
local args, row, start = {}, 0, 1
while true do
  local stop = string.find(ids, '\\n', start, true)
  local id = string.sub(ids, start, (stop or (#ids + 1)) - 1)
  args[#args + 1] = id
  args[#args + 1] = string.sub(matrix, row * width + 1, (row + 1) * width)
  row = row + 1
  if #args >= 512 then
    redis.call('HSET', KEYS[1], unpack(args))
    args = {}
  end
  if not stop then break end
  start = stop + 1
end
if #args > 0 then redis.call('HSET', KEYS[1], unpack(args)) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return row
"""

# KEYS: pool, positions; ARGV: per kept row: slot, stream position, packed row. A slot keeps the row
# with the latest stream position, so two scorers whose batches reach Redis out of order still
# leave algorithm R's result.
_RESERVOIR_LUA = """
local written = 0
for i = 1, #ARGV, 3 do
  local slot, position = ARGV[i], tonumber(ARGV[i + 1])
  local current = tonumber(redis.call('HGET', KEYS[2], slot) or '-1')
  if position > current then
    redis.call('HSET', KEYS[2], slot, ARGV[i + 1])
    redis.call('HSET', KEYS[1], slot, ARGV[i + 2])
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
        self._write_script = client.register_script(_WRITE_FEATURES_LUA)

    def _bucket(self, ts: float) -> str:
        return f"{self.prefix}:{int(ts // _BUCKET_S)}"

    def queue_write(self, pipe: redis.client.Pipeline, event_ids: Sequence[str], X: npt.NDArray[np.float32],
                    now: float | None = None) -> None:
        """Add this batch's writes to ``pipe`` (the caller executes it once per batch).

        The batch travels as two blobs (the ids joined by newlines, the float32 matrix) and a Lua
        script cuts them into hash fields inside Redis: the scorer does no per-row work for it (two C
        calls), which matters because it runs beside the scoring loop and shares its interpreter.
        Ids that themselves contain a newline (allowed, if odd) take the per-row path.
        """
        if not event_ids:
            return
        key = self._bucket(time.time() if now is None else now)
        X = np.ascontiguousarray(X, dtype=np.float32)
        joined = "\n".join(event_ids)
        if joined.count("\n") != len(event_ids) - 1 or not all(event_ids):
            pipe.hset(key, mapping=dict(zip(event_ids, (row.tobytes() for row in X))))
            pipe.expire(key, self.ttl_s + _BUCKET_S)
            return
        self._write_script(keys=[key], args=[joined.encode(), X.tobytes(), 4 * X.shape[1], self.ttl_s + _BUCKET_S],
                           client=pipe)

    def lookup(self, event_ids: Sequence[str], n_features: int | None, now: float | None = None) -> dict[str, npt.NDArray[np.float32]]:
        """Features of the given events that are still stored (unknown/expired ids are absent).

        ``n_features=None`` accepts rows of any width (when no model tells the expected width).
        """
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
                if value is None or eid in found:
                    continue
                if (len(value) % 4 == 0 and len(value)) if n_features is None else len(value) == 4 * n_features:
                    found[eid] = np.frombuffer(value, dtype=np.float32).copy()
        return found


class TrafficReservoir:
    """A bounded uniform sample of all traffic the scorers saw (the contaminated training pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "pg", capacity: int = 20_000) -> None:
        self.client = client
        self.counter_key = f"{prefix}:reservoir:seen"
        self.pool_key = f"{prefix}:reservoir:pool"
        self.positions_key = f"{prefix}:reservoir:positions"
        self.capacity = capacity
        self._script = client.register_script(_RESERVOIR_LUA)

    def queue_offer(self, pipe: redis.client.Pipeline, event_ids: Sequence[str], X: npt.NDArray[np.float32],
                    rng: np.random.Generator) -> int:
        """Reserve this batch's stream positions (one ``INCRBY`` now), then queue the kept rows in
        ``pipe``; returns how many rows were kept."""
        if not event_ids:
            return 0
        seen = int(self.client.incrby(self.counter_key, len(event_ids))) - len(event_ids)
        rows, slots = reservoir_picks(seen, len(event_ids), self.capacity, rng)
        if not len(rows):
            return 0
        packed = pack_rows([event_ids[r] for r in rows.tolist()], np.asarray(X)[rows])
        args: list[object] = []
        for row, slot, blob in zip(rows.tolist(), slots.tolist(), packed):
            args += [slot, seen + row, blob]
        self._script(keys=[self.pool_key, self.positions_key], args=args, client=pipe)
        return len(rows)

    def sample(self, n_features: int) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Everything currently in the pool (at most ``capacity`` rows), in slot order.

        Sorted because a Redis hash's iteration order depends on a hash seed that changes with every
        server start: the same pool would otherwise reach the trainer in a different row order, and
        a seeded fit would not be reproducible."""
        slots = self.client.hgetall(self.pool_key)
        values = [blob for _, blob in sorted(slots.items(), key=lambda item: int(item[0]))]
        return unpack_rows(values, n_features)

    def n_seen(self) -> int:
        return int(self.client.get(self.counter_key) or 0)


# KEYS: meta, features, seq, order; ARGV: per label: event_id, meta bytes, feature bytes.
# Returns one code per label: 0 unchanged (a redelivered duplicate), 1 new, 2 replaced.
_APPLY_LABELS_LUA = """
local out = {}
for i = 1, #ARGV, 3 do
  local eid, meta, feats = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], eid)
  if old == meta then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], eid, meta)
    redis.call('HSET', KEYS[2], eid, feats)
    local seq = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[4], seq, eid)
    if old then out[#out + 1] = 2 else out[#out + 1] = 1 end
  end
end
return out
"""

LabelWrite = Literal["unchanged", "new", "replaced"]
_WRITE_CODES: dict[int, LabelWrite] = {0: "unchanged", 1: "new", 2: "replaced"}


def is_held_back(event_id: str, fraction: float) -> bool:
    """Whether a labelled event belongs to the gate's held-back set instead of training.

    Decided by a hash of the event_id, not at random per run, so an event is held back from
    *every* model: the champion and the candidate are compared on labels neither trained on.
    """
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


@dataclass(frozen=True)
class LabelSet:
    """All stored labels at one moment: ids, 1 = anomaly / 0 = normal, features, change counter.

    Per label also: its provenance (``sources``), ``analysts``, the store's ``change_seq`` when it
    was last written (labels with ``change_seq > trained_seq`` are new since the last training
    run), and whether an operator pinned it (``is_pinned``) or the gate quarantined it
    (``is_quarantined``). The per-label fields default to "manual, old, neither" so a set can be
    built from ids, y and X alone.
    """

    event_ids: list[str]
    y: npt.NDArray[np.int64]
    X: npt.NDArray[np.float32]
    seq: int
    sources: list[str] = field(default_factory=list)
    analysts: list[str] = field(default_factory=list)
    change_seq: npt.NDArray[np.int64] | None = None
    is_pinned: npt.NDArray[np.bool_] | None = None
    is_quarantined: npt.NDArray[np.bool_] | None = None
    trained_seq: int = 0

    def __post_init__(self) -> None:
        n = len(self.event_ids)
        defaults = {"sources": ["manual"] * n, "analysts": [""] * n, "change_seq": np.zeros(n, np.int64),
                    "is_pinned": np.zeros(n, bool), "is_quarantined": np.zeros(n, bool)}
        for name, value in defaults.items():
            current = getattr(self, name)
            if current is None or (isinstance(current, list) and not current and n):
                object.__setattr__(self, name, value)

    @property
    def is_trusted(self) -> npt.NDArray[np.bool_]:
        """Audit labels and pinned labels: the gate's evaluation set, never trained on."""
        return np.array([s == "audit" for s in self.sources], dtype=bool) | self.is_pinned

    @property
    def is_new(self) -> npt.NDArray[np.bool_]:
        """Written since the last training run."""
        return self.change_seq > self.trained_seq

    def split(self, holdout_fraction: float) -> tuple[LabelSet, LabelSet]:
        """(training labels, held-back labels) by :func:`is_held_back`, among the untrusted,
        unquarantined labels: trusted labels are only measured on (:meth:`trusted`), quarantined
        ones neither trained nor measured on until an operator releases them."""
        usable = ~self.is_trusted & ~self.is_quarantined
        mask = np.array([is_held_back(e, holdout_fraction) for e in self.event_ids], dtype=bool)
        return self.subset(usable & ~mask), self.subset(usable & mask)

    def trusted(self) -> LabelSet:
        return self.subset(self.is_trusted)

    def new_untrusted(self) -> LabelSet:
        """New labels whose honesty is in question (not pinned, not already quarantined)."""
        return self.subset(self.is_new & ~self.is_pinned & ~self.is_quarantined)

    def subset(self, mask: npt.NDArray[np.bool_]) -> LabelSet:
        pick = np.flatnonzero(mask)
        return LabelSet(event_ids=[self.event_ids[i] for i in pick], y=self.y[mask], X=self.X[mask], seq=self.seq,
                        sources=[self.sources[i] for i in pick], analysts=[self.analysts[i] for i in pick],
                        change_seq=self.change_seq[mask], is_pinned=self.is_pinned[mask],
                        is_quarantined=self.is_quarantined[mask], trained_seq=self.trained_seq)


class LabelStore:
    """Labels by event_id with their event's features; applying the same label twice changes nothing.

    Keys under ``{prefix}:labels:``: ``meta`` (event_id -> JSON of label, analyst, ts, source),
    ``features`` (event_id -> float32 bytes), ``seq`` (a counter bumped by every new or changed
    label), ``order`` (event_id by the seq of its last change, newest last), ``trained_seq``
    (the ``seq`` the last training run saw; ``seq - trained_seq`` is the new-label count),
    ``trusted`` (set of event ids an operator pinned: ``protoguard labels pin``), ``quarantine``
    (set of event ids the gate's poisoning alarm held out of training: ``protoguard labels
    release``) and ``disagreement`` (hash: ``n_confident``, ``n_contradicting`` summed over the
    training runs whose labels raised no alarm).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "pg") -> None:
        self.client = client
        self.prefix = prefix
        base = f"{prefix}:labels"
        self.meta_key, self.features_key = f"{base}:meta", f"{base}:features"
        self.seq_key, self.order_key, self.trained_key = f"{base}:seq", f"{base}:order", f"{base}:trained_seq"
        self.trusted_key, self.quarantine_key = f"{base}:trusted", f"{base}:quarantine"
        self.disagreement_key = f"{base}:disagreement"
        self._apply = client.register_script(_APPLY_LABELS_LUA)

    def apply(self, event_ids: Sequence[str], metas: Sequence[bytes], X: npt.NDArray[np.float32]) -> list[LabelWrite]:
        """Store labels (``metas`` are canonical JSON bytes); one script call for the whole batch."""
        if not event_ids:
            return []
        X = np.ascontiguousarray(X, dtype=np.float32)
        args: list[bytes | str] = []
        for eid, meta, row in zip(event_ids, metas, X):
            args += [eid, meta, row.tobytes()]
        codes = self._apply(keys=[self.meta_key, self.features_key, self.seq_key, self.order_key], args=args)
        return [_WRITE_CODES[int(c)] for c in codes]

    def previous(self, event_ids: Sequence[str]) -> list[bytes | None]:
        """The stored label JSON of each event (None where unlabelled), for replacement logs."""
        return list(self.client.hmget(self.meta_key, list(event_ids))) if event_ids else []

    def seq(self) -> int:
        return int(self.client.get(self.seq_key) or 0)

    def n_new(self) -> int:
        """Labels added or changed since the last training run."""
        seq, trained = self.client.mget(self.seq_key, self.trained_key)
        return int(seq or 0) - int(trained or 0)

    def mark_trained(self, seq: int) -> None:
        """Record that a training run consumed every label up to ``seq`` (never moves backwards)."""
        self.client.eval("local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
                         "if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end return 0",
                         1, self.trained_key, seq)

    def snapshot(self, n_features: int) -> LabelSet:
        """Every stored label whose features have ``n_features`` columns (others were for another model)."""
        pipe = self.client.pipeline(transaction=True)  # one consistent view of labels, order and both sets
        pipe.get(self.seq_key)
        pipe.get(self.trained_key)
        pipe.hgetall(self.meta_key)
        pipe.hgetall(self.features_key)
        pipe.zrange(self.order_key, 0, -1, withscores=True)
        pipe.smembers(self.trusted_key)
        pipe.smembers(self.quarantine_key)
        seq_raw, trained_raw, metas, features, order, pinned, quarantined = pipe.execute()
        changed = {eid: int(score) for eid, score in order}
        ids: list[str] = []
        ys: list[int] = []
        rows: list[bytes] = []
        sources: list[str] = []
        analysts: list[str] = []
        seqs: list[int] = []
        # Sorted by event id: hash order changes with the server's hash seed, and a seeded retrain
        # must see its labels in the same order every time.
        for eid_b, meta in sorted(metas.items()):
            row = features.get(eid_b)
            if row is None or len(row) != 4 * n_features:
                continue
            label = orjson.loads(meta)
            ids.append(eid_b.decode())
            ys.append(1 if label["label"] == "anomaly" else 0)
            rows.append(row)
            sources.append(label.get("source", "manual"))
            analysts.append(str(label.get("analyst", "")))
            seqs.append(changed.get(eid_b, 0))
        X = np.frombuffer(b"".join(rows), dtype=np.float32).reshape(len(rows), n_features).copy()
        return LabelSet(event_ids=ids, y=np.asarray(ys, dtype=np.int64), X=X, seq=int(seq_raw or 0),
                        sources=sources, analysts=analysts, change_seq=np.asarray(seqs, dtype=np.int64),
                        is_pinned=np.array([e.encode() in pinned for e in ids], dtype=bool),
                        is_quarantined=np.array([e.encode() in quarantined for e in ids], dtype=bool),
                        trained_seq=int(trained_raw or 0))

    # ------------------------------------------------------------------ trust: pinned and quarantined labels
    def pin(self, event_ids: Sequence[str]) -> int:
        """An operator vouches for these events' labels: they join the gate's trusted evaluation set
        (and leave quarantine). Returns how many were not pinned before."""
        if not event_ids:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self.trusted_key, *event_ids)
        pipe.srem(self.quarantine_key, *event_ids)
        return int(pipe.execute()[0])

    def unpin(self, event_ids: Sequence[str]) -> int:
        return int(self.client.srem(self.trusted_key, *event_ids)) if event_ids else 0

    def quarantine(self, event_ids: Sequence[str]) -> int:
        """Hold labels out of training and of the held-back gate (the poisoning alarm's doing)."""
        return int(self.client.sadd(self.quarantine_key, *event_ids)) if event_ids else 0

    def release(self, event_ids: Sequence[str]) -> int:
        """Return quarantined labels to training (an operator judged them honest)."""
        return int(self.client.srem(self.quarantine_key, *event_ids)) if event_ids else 0

    def pinned(self) -> list[str]:
        return sorted(v.decode() for v in self.client.smembers(self.trusted_key))

    def quarantined(self) -> list[str]:
        return sorted(v.decode() for v in self.client.smembers(self.quarantine_key))

    # ------------------------------------------------------------------ the stream's disagreement history
    def disagreement_history(self) -> tuple[int, int]:
        """(confident labels, of which contradicting the champion of their time) over past runs."""
        n_confident, n_contradicting = self.client.hmget(self.disagreement_key, "n_confident", "n_contradicting")
        return int(n_confident or 0), int(n_contradicting or 0)

    def add_disagreement(self, n_confident: int, n_contradicting: int) -> None:
        """Add a run's counts to the history (only runs whose labels raised no alarm)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.disagreement_key, "n_confident", n_confident)
        pipe.hincrby(self.disagreement_key, "n_contradicting", n_contradicting)
        pipe.execute()
