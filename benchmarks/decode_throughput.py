"""Decoder throughput: events/s for batches of valid JSON events with 32 features, on one core.

Run: ``python -m protoguard.benchmarks.decode_throughput [--n-events 10000] [--n-features 32] [--repeats 20]``
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from ..stream.decode import decode_batch


def make_events(n_events: int, n_features: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}" for i in range(n_features)]
    values = rng.normal(size=(n_events, n_features)).round(6)
    events = [
        orjson.dumps({"event_id": f"e{i}", "ts": 1_700_000_000 + i, "entity": f"host-{i % 97}",
                      "features": dict(zip(names, row.tolist()))})
        for i, row in enumerate(values)
    ]
    return events, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-events", type=int, default=10_000)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    events, names = make_events(args.n_events, args.n_features)
    decode_batch(events, names)  # warm up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batch = decode_batch(events, names)
        times.append(time.perf_counter() - t0)
    assert len(batch) == args.n_events and not batch.rejects
    med = statistics.median(times)
    print(f"decode_batch: {args.n_events} events x {args.n_features} features: median {med * 1e3:.1f} ms "
          f"-> {args.n_events / med:,.0f} events/s (best {args.n_events / min(times):,.0f}/s, {args.repeats} repeats)")


if __name__ == "__main__":
    main()
