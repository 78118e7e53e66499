"""Decoder throughput: events/s of ``decode_batch`` on one core, per event shape and feature form.

What it measures: ``stream.decode.decode_batch`` over ``--n-events`` valid events cut into calls of
``--batch-size`` messages (the scorer's default ``stream.max_batch``), timed over ``--repeats``
passes after one warm-up call. Each call's output is checked against the values that were encoded
(no rejects, the exact float32 matrix), so a fast-but-wrong decoder fails instead of scoring well.

Shapes (``--shape``):

- ``unsw``: 186 features, rows of the bundled UNSW-NB15 sample encoded exactly as
  ``protoguard replay`` encodes them (``stream/replay.py`` ``encode_events``; about 3.6 KB of JSON
  per event in dict form). This is the realistic, heavy case.
- ``synthetic``: ``--n-features`` (32) standard-normal values rounded to 6 decimals.

Forms (``--form``): ``dict`` (``features`` as a mapping name -> value, what replay sends) and
``array`` (the same values as a list in the manifest's order, the cheaper wire form).

Two rates are reported: wall time (``perf_counter``), and this thread's CPU time
(``thread_time``), which leaves out the time other processes held the core, so it is the steadier
figure on a shared machine (on a dedicated core the two agree). Both are medians over the
repeats. The targets are issue 11's. A last line times a fixed pure-Python loop on the same core,
a yardstick for comparing runs made on different machines.

Run (one core, no BLAS threads, low priority on a shared machine)::

    OMP_NUM_THREADS=1 nice -n 5 taskset -c 1 python -m protoguard.benchmarks.decode_throughput \\
        --out benchmarks/results/decode_throughput.json --label after

``--baseline REV`` also times ``stream/decode.py`` as it was at git revision ``REV``, alternating
with today's decoder repeat by repeat, and prints the speed-up (median of per-repeat CPU-time
ratios), the number that survives a shared machine's load. ``--out`` merges this run into the
JSON file under ``--label`` (other labels are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pydantic
from rich.console import Console
from rich.table import Table

from ..data import bundled_sample
from ..stream.decode import NATIVE_SCANNER, decode_batch
from ..stream.replay import encode_events, load_dataset

_UNSW_SAMPLE = bundled_sample()
#: Issue 11: the decoder must not be what holds the scorer under the Kafka client's ceiling.
_TARGET_EVENTS_PER_S = {"unsw": 50_000, "synthetic": 150_000}
#: A fixed event time: the payload (and so the bytes parsed) is identical from run to run.
_TS = 1_700_000_000.0


@dataclass(frozen=True)
class Workload:
    """The messages of one (shape, form) case and what decoding them must give."""

    shape: str
    form: str
    values: list[bytes]
    feature_names: list[str]
    expected: npt.NDArray[np.float32]

    @property
    def bytes_per_event(self) -> float:
        return sum(map(len, self.values)) / len(self.values)


def _synthetic_matrix(n_events: int, n_features: int, seed: int) -> tuple[npt.NDArray[np.float64], list[str]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_events, n_features)).round(6), [f"f{i:02d}" for i in range(n_features)]


def _dict_form(X: npt.NDArray[Any], names: Sequence[str]) -> list[bytes]:
    # encode_events is what `protoguard replay` sends; using it keeps the payload realistic.
    return [value for _, value, _ in encode_events(X, names, ts=_TS)]


def _array_form(values: list[bytes], names: Sequence[str]) -> list[bytes]:
    """The same events with ``features`` as a list in ``names`` order (what a high-rate producer sends)."""
    out = []
    for value in values:
        event = orjson.loads(value)
        event["features"] = [event["features"][n] for n in names]
        out.append(orjson.dumps(event))
    return out


def build_workloads(shapes: Sequence[str], forms: Sequence[str], n_events: int, n_features: int,
                    data: Path, seed: int = 0) -> list[Workload]:
    """One ``Workload`` per (shape, form); UNSW rows are a seeded sample of ``data``."""
    workloads = []
    for shape in shapes:
        if shape == "unsw":
            dataset = load_dataset(data)
            rows = np.random.default_rng(seed).choice(len(dataset.X), size=n_events, replace=n_events > len(dataset.X))
            X: npt.NDArray[Any] = dataset.X[rows]
            names = dataset.feature_names
        else:
            X, names = _synthetic_matrix(n_events, n_features, seed)
        dict_values = _dict_form(X, names)
        expected = np.asarray(X, dtype=np.float32)
        for form in forms:
            values = dict_values if form == "dict" else _array_form(dict_values, names)
            workloads.append(Workload(shape, form, values, list(names), expected))
    return workloads


Decoder = Callable[[Sequence[bytes | None], Sequence[str]], Any]


def load_baseline(rev: str) -> Decoder:
    """``decode_batch`` of ``stream/decode.py`` as it was at git revision ``rev`` (for ``--baseline``).

    The old file is compiled as a sibling module of ``protoguard.stream``, so its relative
    imports resolve against today's package (today's schemas, which is what a before/after of
    the decoder alone should hold fixed).
    """
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:stream/decode.py"],
                            check=True, capture_output=True, text=True).stdout
    name = "protoguard.stream._decode_baseline"
    module = types.ModuleType(name)
    module.__package__ = "protoguard.stream"
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    exec(compile(source, f"{rev}:stream/decode.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module.decode_batch  # type: ignore[no-any-return]


def _commit_of(rev: str) -> str:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev],
                          check=True, capture_output=True, text=True).stdout.strip()


def _check(decode: Decoder, workload: Workload, batch_size: int, who: str) -> None:
    """Every event back, bit for bit: a fast-but-wrong decoder stops the benchmark."""
    values, names = workload.values, workload.feature_names
    for start in range(0, len(values), batch_size):
        batch = decode(values[start:start + batch_size], names)
        if batch.rejects or not np.array_equal(batch.X, workload.expected[start:start + batch_size]):
            first = batch.rejects[0].message if batch.rejects else "values differ"
            raise SystemExit(f"{workload.shape}/{workload.form}: {who} got it wrong ({first})")


def measure(workload: Workload, batch_size: int, repeats: int, baseline: Decoder | None = None) -> dict[str, Any]:
    """Events/s of ``decode_batch`` on ``workload`` (wall and CPU time, one value per repeat).

    With ``baseline``, that decoder is timed too, alternating with ``decode_batch`` repeat by
    repeat, so that a shared machine's load falls on both alike; the speed-up is the median of
    the per-repeat ratios of CPU time, the robust number on such a machine.
    """
    values, names = workload.values, workload.feature_names
    decoders: dict[str, Decoder] = {"current": decode_batch}
    if baseline is not None:
        decoders["baseline"] = baseline
    for who, decode in decoders.items():
        _check(decode, workload, batch_size, who)  # also the warm-up
    wall: dict[str, list[float]] = {who: [] for who in decoders}
    cpu: dict[str, list[float]] = {who: [] for who in decoders}
    for _ in range(repeats):
        for who, decode in decoders.items():
            wall_start, cpu_start = time.perf_counter(), time.thread_time()
            for start in range(0, len(values), batch_size):
                decode(values[start:start + batch_size], names)
            cpu[who].append(max(time.thread_time() - cpu_start, 1e-9))
            wall[who].append(time.perf_counter() - wall_start)
    n = len(values)
    result = {
        "shape": workload.shape, "form": workload.form, "n_features": len(names),
        "bytes_per_event": round(workload.bytes_per_event),
        "events_per_s_median": round(n / statistics.median(wall["current"])),
        "events_per_s_best": round(n / min(wall["current"])),
        "cpu_events_per_s_median": round(n / statistics.median(cpu["current"])),
        "target_events_per_s": _TARGET_EVENTS_PER_S[workload.shape],
        "cpu_events_per_s_all": [round(n / t) for t in cpu["current"]],
    }
    if baseline is not None:
        result |= {
            "baseline_cpu_events_per_s_median": round(n / statistics.median(cpu["baseline"])),
            "baseline_cpu_events_per_s_all": [round(n / t) for t in cpu["baseline"]],
            "speedup_cpu_median": round(statistics.median(b / c for b, c in zip(cpu["baseline"], cpu["current"])), 2),
        }
    return result


def _calibration_ms() -> float:
    """CPU ms of a fixed pure-Python loop (best of 5): how fast this core runs the interpreter."""
    best = float("inf")
    for _ in range(5):
        started = time.thread_time()
        sum(range(10**6))
        best = min(best, time.thread_time() - started)
    return best * 1e3


def _write(path: Path, label: str, run: dict[str, Any]) -> None:
    runs: dict[str, Any] = {}
    if path.exists():
        runs = json.loads(path.read_text()).get("runs", {})
    runs[label] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="unsw,synthetic", help="comma list of unsw, synthetic (default both)")
    parser.add_argument("--form", default="dict,array", help="comma list of dict, array (default both)")
    parser.add_argument("--n-events", type=int, default=8192, help="events per pass (default 8192)")
    parser.add_argument("--batch-size", type=int, default=2048,
                        help="messages per decode_batch call (default 2048, the scorer's stream.max_batch)")
    parser.add_argument("--n-features", type=int, default=32, help="features of the synthetic shape (default 32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data", type=Path, default=_UNSW_SAMPLE, help="the npz of the unsw shape")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also time stream/decode.py of this git revision, interleaved (e.g. HEAD~1)")
    parser.add_argument("--out", type=Path, default=None, help="merge the results into this JSON file")
    parser.add_argument("--label", default="current", help="key of this run in --out (default 'current')")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shape.split(",")]
    forms = [f.strip() for f in args.form.split(",")]
    for name, chosen, allowed in (("--shape", shapes, {"unsw", "synthetic"}), ("--form", forms, {"dict", "array"})):
        if not chosen or set(chosen) - allowed:
            parser.error(f"{name} takes a comma list of {', '.join(sorted(allowed))} (got {','.join(chosen)!r})")

    baseline = load_baseline(args.baseline) if args.baseline else None
    calibration_before_ms = _calibration_ms()
    rows = [measure(w, args.batch_size, args.repeats, baseline)
            for w in build_workloads(shapes, forms, args.n_events, args.n_features, args.data)]
    calibration_ms = (calibration_before_ms, _calibration_ms())
    table = Table(title=f"decode_batch ({'native scanner' if NATIVE_SCANNER else 'Python paths only'}), "
                        f"{args.n_events} events in calls of {args.batch_size}, "
                        f"median of {args.repeats}, load average {os.getloadavg()[0]:.1f}")
    columns = ["shape", "features", "form", "bytes/event", "events/s (wall)", "events/s (CPU)", "target",
               "met (wall / CPU)"]
    if baseline is not None:
        columns += [f"{args.baseline} (CPU)", "speed-up"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("shape", "form") else "right")
    for r in rows:
        met = ["[green]yes[/]" if r[key] >= r["target_events_per_s"] else "[red]no[/]"
               for key in ("events_per_s_median", "cpu_events_per_s_median")]
        cells = [r["shape"], str(r["n_features"]), r["form"], f"{r['bytes_per_event']:,}",
                 f"{r['events_per_s_median']:,}", f"{r['cpu_events_per_s_median']:,}",
                 f"{r['target_events_per_s']:,}", " / ".join(met)]
        if baseline is not None:
            cells += [f"{r['baseline_cpu_events_per_s_median']:,}", f"x{r['speedup_cpu_median']:.2f}"]
        table.add_row(*cells)
    console = Console(width=160)
    console.print(table)
    console.print(f"this core ran sum(range(10**6)) in {calibration_ms[0]:.1f} ms of CPU before and "
                  f"{calibration_ms[1]:.1f} ms after (a yardstick between runs and machines)")
    if args.out is not None:
        run = {
            "n_events": args.n_events, "batch_size": args.batch_size, "repeats": args.repeats,
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "python": sys.version.split()[0], "numpy": np.__version__, "orjson": orjson.__version__,
            "pydantic": pydantic.VERSION, "native_scanner": NATIVE_SCANNER, "load_average": [round(x, 2) for x in os.getloadavg()],
            "baseline": _commit_of(args.baseline) if args.baseline else None,
            "calibration_sum_range_1e6_cpu_ms": [round(x, 2) for x in calibration_ms],
            "results": rows,
        }
        _write(args.out, args.label, run)


if __name__ == "__main__":
    main()
