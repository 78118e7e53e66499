"""Turn a dataset file (npz/CSV) into ``Event`` messages on a topic, so any dataset can be streamed.

Not on the scorer's hot path; it is the test and demo producer. Rows are serialised with orjson
(one call per row; a producer has to make one message per event anyway).
"""
from __future__ import annotations

import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ["Dataset", "encode_events", "load_dataset", "malformed_messages"]


@dataclass(frozen=True)
class Dataset:
    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64] | None
    feature_names: list[str]
    kinds: list[str] | None = None


def load_dataset(path: Path | str) -> Dataset:
    """Read an npz (X, optional y, feature_names, kinds) or a CSV with a header (optional ``label`` column)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            X = np.asarray(data["X"], dtype=np.float32)
            y = np.asarray(data["y"]).astype(np.int64).ravel() if "y" in data else None
            names = [str(n) for n in data["feature_names"]] if "feature_names" in data else [f"f{i}" for i in range(X.shape[1])]
            kinds = [str(k) for k in data["kinds"]] if "kinds" in data else None
        return Dataset(X, y, names, kinds)
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r for r in reader if r]
    label_col = header.index("label") if "label" in header else None
    names = [h for i, h in enumerate(header) if i != label_col]
    data = np.asarray([[float(v) for i, v in enumerate(r) if i != label_col] for r in rows], dtype=np.float32)
    labels = np.asarray([int(float(r[label_col])) for r in rows], dtype=np.int64) if label_col is not None else None
    return Dataset(data, labels, names)


def encode_events(X: npt.NDArray[np.float32], feature_names: Sequence[str], *, id_prefix: str = "ev",
                  start: int = 0, n_entities: int = 50, kinds: Sequence[str] | None = None,
                  ts: float | None = None) -> Iterator[tuple[bytes, bytes, str]]:
    """Yield (key, value, event_id) per row: the key is the entity, so one entity stays on one partition."""
    now = time.time() if ts is None else ts
    names = list(feature_names)
    for i, row in enumerate(X.tolist(), start=start):
        event_id = f"{id_prefix}-{i}"
        entity = f"host-{i % n_entities}"
        event: dict[str, object] = {"event_id": event_id, "ts": now, "entity": entity,
                                    "features": dict(zip(names, row))}
        if kinds is not None:
            event["kind"] = kinds[i - start]
        yield entity.encode(), orjson.dumps(event), event_id


def malformed_messages(n: int, feature_names: Sequence[str], seed: int = 0) -> list[bytes]:
    """A mix of the bad inputs producers really send: truncated JSON, wrong types, missing fields, NaN."""
    rng = np.random.default_rng(seed)
    name = feature_names[0]
    kinds = [
        lambda i: b'{"event_id": "bad-%d", "ts": 1, "entity": "h", "features": {' % i,
        lambda i: orjson.dumps({"event_id": f"bad-{i}", "ts": 1, "entity": "h", "features": {name: "lots"}}),
        lambda i: orjson.dumps({"event_id": f"bad-{i}", "entity": "h", "features": {name: 1}}),
        lambda i: b'{"event_id":"bad-%d","ts":1,"entity":"h","features":{"%s":NaN}}' % (i, name.encode()),
        lambda i: b"\xff\xfe not utf-8 %d" % i,
    ]
    return [kinds[int(k)](i) for i, k in enumerate(rng.integers(0, len(kinds), n))]
