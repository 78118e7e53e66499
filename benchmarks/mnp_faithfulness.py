"""Does our MNP reproduce the authors' code? Run it the reference way and compare with their numbers.

Runs :class:`~protoguard.trainer.detectors.mnp.MNPDetector` (``variant="faithful"``,
``validation="reference"``) on every dataset of ``shared/spec/mnp-reference-results.md`` under the
reference protocol (:func:`~protoguard.benchmarks.protocol.split_reference`), seeds 42-44, and
writes a markdown table of mean +- std AUC-PR (trapezoid, as the reference computes it), average
precision and AUC-ROC next to the reference MNP column.

Each finished run is appended to a JSON-lines file first, so an interrupted run resumes where it
stopped (delete the file to start over). Usage, from the repository root::

    nice -n 10 python benchmarks/mnp_faithfulness.py            # all datasets, smallest first
    python benchmarks/mnp_faithfulness.py --datasets 38_thyroid --seeds 42
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from protoguard.benchmarks.protocol import split_reference
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.evaluation import detection_metrics

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
DATA_DIR = SHARED / "datasets" / "tabular"
REFERENCE_MD = SHARED / "spec" / "mnp-reference-results.md"
RESULTS_DIR = REPO / "benchmarks" / "results"
# The reference table names UNSW by its DevNet file name; the shared copy is called differently.
FILE_FOR = {"UNSW_NB15_traintest_backdoor": "unsw_nb15_backdoor"}
DEFAULT_SEEDS = (42, 43, 44)
NOTES_HEADING = "## Notes"


def parse_reference(path: Path = REFERENCE_MD) -> dict[str, dict[str, tuple[float, float]]]:
    """{dataset: {"auc_pr_trapz": (mean, std), "auc_roc": (mean, std)}} from the MNP column."""
    text = path.read_text()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    metric = None
    for line in text.splitlines():
        if line.startswith("## AUC-PR"):
            metric = "auc_pr_trapz"
        elif line.startswith("## AUC-ROC"):
            metric = "auc_roc"
        elif metric and line.startswith("| ") and not line.startswith("| dataset"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            found = re.search(r"([\d.]+)±([\d.]+)", cells[1])
            if found:
                out.setdefault(cells[0], {})[metric] = (float(found.group(1)), float(found.group(2)))
    return out


def run_one(name: str, seed: int, variant: str, validation: str) -> dict[str, object]:
    split = split_reference(DATA_DIR / f"{FILE_FOR.get(name, name)}.npz")
    det = MNPDetector(variant=variant, validation=validation, weighting="spec", random_state=seed)
    started = time.perf_counter()
    det.fit(split.X_train, split.semi_y, X_val=split.X_val, y_val=split.y_val, feature_names=split.feature_names)
    fit_s = time.perf_counter() - started
    metrics = detection_metrics(split.y_test, det.score(split.X_test))
    summary = det.training_summary_
    return {
        "dataset": name, "seed": seed, "variant": variant, "validation": validation, "fit_s": round(fit_s, 2),
        "n_prototypes": summary["n_prototypes"], "epochs": summary["epochs"], "stop_reason": summary["stop_reason"],
        "pretrain_epochs": summary.get("pretrain_epochs"), "n_labelled": summary["n_labelled"],
        "n_features": int(split.X_train.shape[1]), "n_train": int(len(split.X_train)), **metrics,
    }


def _fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f}±{np.std(values):.3f}"


def write_table(runs: list[dict[str, object]], reference: dict[str, dict[str, tuple[float, float]]],
                order: list[str], out: Path, command: str) -> None:
    lines = [
        "# MNP faithfulness: our faithful variant vs the reference MNP column",
        "",
        f"Command: `{command}`. Protocol: `benchmarks/protocol.py` `split_reference` (60/35/5, MinMax,",
        "1 % labelled), `variant=\"faithful\"`, `validation=\"reference\"`, seeds "
        + ", ".join(str(s) for s in sorted({int(r['seed']) for r in runs})) + "; metrics on the 35 % test part,",
        "mean±std over seeds (np.std, ddof=0). Reference: `shared/spec/mnp-reference-results.md` (MNP column).",
        "Δ = ours − reference mean; ✓ when |Δ| ≤ ref std + our std (the 1-σ seed spreads overlap).",
        "",
        "| dataset | n_train | D | K (per seed) | AUC-PR trapz | ref | Δ | | AUC-ROC | ref | Δ | | AP | fit s | epochs |",
        "|---|---:|---:|---|---|---|---:|---|---|---|---:|---|---|---:|---|",
    ]
    for name in order:
        rs = [r for r in runs if r["dataset"] == name]
        if not rs:
            lines.append(f"| {name} | not run | | | | | | | | | | | | | |")
            continue
        cells = [name, str(rs[0]["n_train"]), str(rs[0]["n_features"]), ",".join(str(r["n_prototypes"]) for r in rs)]
        for metric in ("auc_pr_trapz", "auc_roc"):
            vals = [float(r[metric]) for r in rs]  # type: ignore[arg-type]
            ref_mean, ref_std = reference.get(name, {}).get(metric, (float("nan"), float("nan")))
            delta = float(np.mean(vals)) - ref_mean
            ok = "✓" if abs(delta) <= ref_std + float(np.std(vals)) else "✗"
            cells += [_fmt(vals), f"{ref_mean:.3f}±{ref_std:.3f}", f"{delta:+.3f}", ok]
        cells += [_fmt([float(r["auc_pr"]) for r in rs]), f"{np.mean([float(r['fit_s']) for r in rs]):.1f}",  # type: ignore[arg-type]
                  ",".join(str(r["epochs"]) for r in rs)]
        lines.append("| " + " | ".join(cells) + " |")
    # Hand-written findings below the table survive re-runs.
    previous = out.read_text() if out.exists() else ""
    notes = previous[previous.index(NOTES_HEADING):] if NOTES_HEADING in previous else ""
    out.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference = parse_reference()
    parser.add_argument("--datasets", nargs="*", default=None, help="default: all of the reference table, smallest first")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--variant", default="faithful", choices=["faithful", "fixed"])
    parser.add_argument("--validation", default="reference", choices=["reference", "frugal", "fixed_epochs"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "mnp_faithfulness.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared machine: one core per job

    def size(name: str) -> int:
        with np.load(DATA_DIR / f"{FILE_FOR.get(name, name)}.npz", allow_pickle=False) as data:
            return int(data["X"].size)

    names = args.datasets or sorted(reference, key=size)
    runs_path = args.out.with_suffix(".jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.exists() else []
    done = {(r["dataset"], r["seed"], r["variant"], r["validation"]) for r in runs}
    command = "nice -n 10 python benchmarks/mnp_faithfulness.py" + (
        f" --variant {args.variant}" if args.variant != "faithful" else "") + (
        f" --validation {args.validation}" if args.validation != "reference" else "")
    for name in names:
        for seed in args.seeds:
            if (name, seed, args.variant, args.validation) in done:
                continue
            result = run_one(name, seed, args.variant, args.validation)
            print(json.dumps(result), flush=True)
            runs.append(result)
            with runs_path.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            mine = [r for r in runs if r["variant"] == args.variant and r["validation"] == args.validation]
            write_table(mine, reference, sorted(reference, key=size), args.out, command)


if __name__ == "__main__":
    main()
