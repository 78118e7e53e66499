"""Would averaging independent MNP fits help? Estimated on the validation part only.

Why this exists: the label-frugal ``mnp`` varied a lot from seed to seed (benchmarks/results/tabular),
and the decision to average several fits had to be made without reading the test part. This script
fits the one-member ``mnp-m1`` for each seed, keeps its scores on the 5 % validation part (which no
frugal method ever trains on), then scores ensembles by averaging the saved scores of every
3-subset (and the 5-set) of seeds. An ensemble of independently fitted members with those seeds is
what ``MNPDetector(n_members=3)`` fits, so the estimate needs no extra fits.

    python -m protoguard.benchmarks.member_ensemble_dev --datasets all --out bench-out/dev/scores

Resumable (one ``.npz`` per dataset and seed); prints and writes ``OUT/ensemble.md``.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..trainer.evaluation import auc_pr_trapz
from .harness import build_method, subsample_train
from .protocol import split_reference

_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tabular"
_SEEDS = (42, 43, 44, 45, 46)


def save_scores(dataset: Path, out: Path, max_rows: int | None) -> None:
    split = split_reference(dataset)
    for seed in _SEEDS:
        target = out / f"{dataset.stem}_{seed}.npz"
        if target.exists():
            continue
        part = subsample_train(split, max_rows, seed)
        started = time.perf_counter()
        detector = build_method("mnp-m1", seed).fit(part.X_train, part.semi_y)
        np.savez(target, val=detector.score(part.X_val), y=part.y_val)
        print(f"{dataset.stem} seed={seed} fit={time.perf_counter() - started:.1f}s", flush=True)


def ensemble_table(out: Path) -> str:
    """Markdown: per dataset, mean AUC-PR (trapz) of single fits, 3-member and 5-member averages."""
    by_dataset: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for path in sorted(out.glob("*.npz")):
        name, seed = path.stem.rsplit("_", 1)
        with np.load(path, allow_pickle=False) as data:
            by_dataset.setdefault(name, {})[int(seed)] = (data["val"], data["y"])
    lines = ["| dataset | single fit | mean of 3 | mean of 5 |", "|---|---|---|---|"]
    columns: list[list[float]] = [[], [], []]
    for name, fits in sorted(by_dataset.items()):
        if len(fits) < len(_SEEDS):
            continue
        y = fits[_SEEDS[0]][1]
        single = statistics.mean(auc_pr_trapz(y, fits[s][0]) for s in _SEEDS)
        three = statistics.mean(
            auc_pr_trapz(y, np.mean([fits[s][0] for s in combo], axis=0)) for combo in itertools.combinations(_SEEDS, 3)
        )
        five = auc_pr_trapz(y, np.mean([fits[s][0] for s in _SEEDS], axis=0))
        for column, value in zip(columns, (single, three, five)):
            column.append(value)
        lines.append(f"| {name} | {single:.3f} | {three:.3f} | {five:.3f} |")
    if columns[0]:
        means = " | ".join(f"**{statistics.mean(c):.3f}**" for c in columns)
        lines.append(f"| mean of {len(columns[0])} datasets | {means} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="all", help="comma-separated stems, or 'all'")
    parser.add_argument("--out", type=Path, default=Path("bench-out/dev/scores"))
    parser.add_argument("--data-dir", type=Path, default=_DATA_DIR)
    parser.add_argument("--max-rows", type=int, default=50_000, help="training-row cap for 11_donors (as the table)")
    parser.add_argument("--analyse-only", action="store_true", help="only rebuild the table from saved scores")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.analyse_only:
        paths = sorted(args.data_dir.glob("*.npz")) if args.datasets == "all" else [
            args.data_dir / f"{name}.npz" for name in args.datasets.split(",")]
        for path in paths:
            save_scores(path, args.out, args.max_rows if path.stem == "11_donors" else None)
    table = ensemble_table(args.out)
    (args.out / "ensemble.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
