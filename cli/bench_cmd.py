"""``protoguard bench``: MNP and its weakly supervised peers on the shared tabular datasets.

Resumable: rerunning the same command skips every (dataset, method, seed, contamination) already
in ``OUT/results.csv`` and rebuilds ``results.md`` / ``auc_pr.png`` from the whole CSV, so
methods can be added in later invocations (``--methods mnp``) into the same ``--out``.

``--max-rows N`` caps the *training* part of each dataset at N rows (every labelled anomaly kept,
unlabelled rows sampled uniformly per seed); test and validation parts stay whole. Use it for the
large files (donors 372k training rows, UNSW-NB15 57k, ALOI 30k, shuttle 29k, campaign 25k) to
fit a 2-core budget; ``--max-rows-for`` applies it to named datasets only.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..schemas.errors import ConfigError
from ..schemas.settings import Settings

__all__ = ["register"]

#: Where the datasets are when no --data-dir is given: $PROTOGUARD_DATASETS, else the shared folder
#: beside a checkout, relative to the working directory (so an installed package finds them when
#: run from the repository root, and says --data-dir when it does not).
_DEFAULT_DATA_DIR = Path(os.environ.get("PROTOGUARD_DATASETS", "../shared/datasets/tabular"))
_PEER_METHODS = "devnet,deepsad,prenet,feawad,rosas,iforest,hgb"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("bench", help="benchmark MNP and its peers on the tabular datasets (resumable)")
    parser.add_argument("--datasets", default="all", help="comma-separated file stems under --data-dir, or 'all'")
    parser.add_argument("--methods", default=f"mnp,{_PEER_METHODS}", help="comma-separated: mnp (and its variants), devnet, deepsad, prenet, feawad, rosas, iforest, hgb")
    parser.add_argument("--seeds", default="42,43,44,45,46", help="comma-separated ints (default 42..46)")
    parser.add_argument("--contamination", default="natural",
                        help="comma-separated unlabelled anomaly shares, e.g. 0,0.02,0.05,0.10; 'natural' keeps the split's")
    parser.add_argument("--out", type=Path, default=Path("bench-out/tabular"), help="output directory (default bench-out/tabular)")
    parser.add_argument("--data-dir", type=Path, default=_DEFAULT_DATA_DIR, help=f"folder of .npz files (default $PROTOGUARD_DATASETS or {_DEFAULT_DATA_DIR})")
    parser.add_argument("--max-rows", type=int, default=None, help="cap training rows per dataset (subsampled; see module doc)")
    parser.add_argument("--max-rows-for", default=None,
                        help="comma-separated stems that --max-rows applies to (default: every dataset)")
    parser.add_argument("--max-fit-s", type=float, default=120.0, help="wall-clock cap per peer fit in seconds (default 120)")
    parser.add_argument("--evaluate-on", choices=("test", "val"), default="test",
                        help="score the test part (default) or the 5 %% validation part: a development split for "
                             "design decisions, so the test part is read only for the reported table")
    parser.add_argument("--paired-baseline", default=None, metavar="METHOD",
                        help="add each method's per-seed difference against METHOD to the report (e.g. mnp-off: "
                             "does the weighting beat none by more than the seed spread?)")
    parser.set_defaults(handler=run)


def _parse_list(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{name} is empty; give a comma-separated list")
    return items


def _resolve_datasets(spec: str, data_dir: Path) -> list[Path]:
    available = {p.stem: p for p in data_dir.glob("*.npz")}
    if not available:
        raise ConfigError(f"no .npz files in {data_dir}; pass --data-dir")
    if spec == "all":
        return sorted(available.values(), key=lambda p: p.stat().st_size)  # small ones first: numbers arrive early
    unknown = [name for name in _parse_list(spec, "datasets") if name not in available]
    if unknown:
        raise ConfigError(f"--datasets: unknown {unknown}; available: {', '.join(sorted(available))}")
    return [available[name] for name in _parse_list(spec, "datasets")]


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..benchmarks.harness import METHOD_NAMES, run_benchmark  # torch and the peers: only when run

    datasets = _resolve_datasets(args.datasets, args.data_dir)
    methods = _parse_list(args.methods, "methods")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_NAMES)}")
    try:
        seeds = [int(s) for s in _parse_list(args.seeds, "seeds")]
        contaminations = [None if c == "natural" else float(c) for c in _parse_list(args.contamination, "contamination")]
    except ValueError as exc:
        raise ConfigError(f"--seeds must be ints and --contamination floats or 'natural': {exc}") from exc
    if args.evaluate_on == "val" and "mnp-reference" in methods:
        raise ConfigError("--evaluate-on val: mnp-reference early-stops on the validation part; drop it from --methods")
    if args.paired_baseline is not None and args.paired_baseline not in METHOD_NAMES:
        raise ConfigError(f"--paired-baseline: unknown {args.paired_baseline!r}; choose from {', '.join(METHOD_NAMES)}")
    if any(c is not None and not 0 <= c < 1 for c in contaminations):
        raise ConfigError(f"--contamination values must be in [0, 1); got {args.contamination}")
    max_rows: dict[str, int] | int | None = args.max_rows
    if args.max_rows is not None and args.max_rows_for:
        max_rows = {name: args.max_rows for name in _parse_list(args.max_rows_for, "max-rows-for")}
    results = run_benchmark(datasets, methods, seeds, args.out, contaminations=contaminations, max_rows=max_rows,
                            max_fit_s=args.max_fit_s, evaluate_on=args.evaluate_on, paired_baseline=args.paired_baseline)
    print(f"results: {results}\nreport:  {args.out / 'results.md'}\nplot:    {args.out / 'auc_pr.png'}")
    return 0
