"""Turn a harness ``results.csv`` into ``results.md`` (tables, mean ranks) and ``auc_pr.png`` (bars).

Why separate from the harness: reports are rebuilt from the CSV alone, so a resumed or merged
run (several ``--methods`` invocations into one directory) always gets one consistent report.

Ranks: per (dataset, contamination) the methods are ranked by their mean metric over seeds
(1 = best; ties share the average rank; a method whose every run failed ranks last), and a
method's mean rank is an average over datasets. Methods that ran on every dataset of the table
are ranked among themselves; a method run on fewer datasets (an expensive ablation) is ranked, on
each dataset it ran, against those full-coverage methods plus itself, so it neither distorts the
others' ranks nor goes unranked.

Paired view (``paired_baseline``): a claim such as "weighting on beats off by more than the seed
spread" compares two methods fitted on the same seeds, so it is read per seed: the difference of the
two methods' means over their common datasets, then the mean and std of that difference over the
seeds both ran everywhere. The difference cancels what a seed does to both (the split of the
hold-out, the sampled rows), so it is the fair test of one method against another; the table says
whether the mean difference is above its std, the bar issue 12 sets.

Rebuilding by hand (a merged CSV, or a paired view after the run)::

    python -m protoguard.benchmarks.report benchmarks/results/contamination_weighting/results.csv --paired-baseline mnp-off

A hand-written provenance comment (``<!-- ... -->``) at the top of an existing ``results.md`` is
kept when the report is rewritten.
"""
from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .harness import METHOD_NAMES, read_results

__all__ = ["PairedDifference", "main", "mean_ranks", "paired_difference", "seed_spread", "summarise", "write_report"]

_METRICS = (("auc_pr_trapz", "AUC-PR (trapezoid, as the reference code)"), ("auc_pr", "AUC-PR (average precision)"),
            ("auc_roc", "AUC-ROC"))

Summary = dict[tuple[str, str, str], dict[str, Any]]

#: The leading HTML comment of a results.md (hand-written provenance), kept across rewrites.
_PROVENANCE = re.compile(r"\A\s*<!--.*?-->\n", re.DOTALL)


def summarise(rows: list[dict[str, Any]]) -> Summary:
    """(contamination, dataset, method) -> mean/std per metric, runs, failures, mean fit seconds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["contamination"], row["dataset"], row["method"])].append(row)
    out: Summary = {}
    for key, runs in groups.items():
        entry: dict[str, Any] = {"n_runs": len(runs), "n_failed": sum(1 for r in runs if r["error"])}
        # Per-seed AUC-PR (a failed run counts 0, as in the mean): the seed spread of a method's
        # mean over datasets is the std over seeds of that seed's mean (_seed_spread).
        entry["by_seed"] = {int(r["seed"]): (0.0 if r["error"] or not math.isfinite(r["auc_pr_trapz"]) else r["auc_pr_trapz"])
                            for r in runs}
        for metric, _ in (*_METRICS, ("fit_s", "")):
            values = np.array([r[metric] for r in runs if not r["error"] and math.isfinite(r[metric])], dtype=float)
            entry[metric] = (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)
        out[key] = entry
    return out


def _ordered_methods(summary: Summary) -> list[str]:
    present = {m for (_, _, m) in summary}
    return [m for m in METHOD_NAMES if m in present] + sorted(present - set(METHOD_NAMES))


def mean_ranks(summary: Summary, metric: str) -> dict[str, float]:
    """Each method's mean rank (1 = best) by ``metric``; see the module docstring for partial methods."""
    by_group: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (cont, dataset, method), entry in summary.items():
        value = entry[metric][0]
        by_group[(cont, dataset)][method] = value if math.isfinite(value) else -math.inf
    coverage = {m: sum(1 for scores in by_group.values() if m in scores) for m in {m for (_, _, m) in summary}}
    full = {m for m, n in coverage.items() if n == max(coverage.values())}
    ranks: dict[str, list[float]] = defaultdict(list)
    for scores in by_group.values():
        for m in scores:
            rivals = [v for other, v in scores.items() if other in full or other == m]
            better = sum(1 for v in rivals if v > scores[m])
            tied = sum(1 for v in rivals if v == scores[m])
            ranks[m].append(better + (tied + 1) / 2)
    return {m: float(np.mean(r)) for m, r in ranks.items()}


def seed_spread(summary: Summary, method: str) -> tuple[float, float, int]:
    """(mean, std over seeds, seeds) of the method's per-seed mean AUC-PR (trapz) over its datasets.

    Only seeds that ran on every one of the method's datasets count, so each per-seed mean covers
    the same datasets. This is the "seed spread of the mean" a claim of one method beating another
    on the mean has to exceed.
    """
    entries = [v for (_, _, m), v in summary.items() if m == method]
    seeds = set.intersection(*(set(e["by_seed"]) for e in entries)) if entries else set()
    if not seeds:
        return math.nan, math.nan, 0
    per_seed = [np.mean([e["by_seed"][s] for e in entries]) for s in sorted(seeds)]
    return float(np.mean(per_seed)), float(np.std(per_seed)), len(seeds)


@dataclass(frozen=True)
class PairedDifference:
    """``method`` minus ``baseline``, per seed, on the mean AUC-PR (trapz) over their common datasets."""

    mean: float
    std: float
    n_seeds: int
    n_datasets: int
    n_wins: int

    @property
    def beats_spread(self) -> bool:
        """The mean difference is above its std over seeds (issue 12's bar)."""
        return self.n_seeds > 1 and self.mean > self.std


def paired_difference(summary: Summary, method: str, baseline: str) -> PairedDifference | None:
    """Per-seed difference of two methods' dataset means (see the module docstring); None without overlap.

    Only datasets both methods ran on count, and only seeds both ran on every one of them, so each
    per-seed difference covers the same datasets for both. Given several contamination levels, each
    (level, dataset) cell counts as one dataset; the report passes one level at a time.
    """
    mine = {(c, d): v for (c, d, m), v in summary.items() if m == method}
    theirs = {(c, d): v for (c, d, m), v in summary.items() if m == baseline}
    datasets = sorted(set(mine) & set(theirs))
    if not datasets:
        return None
    seeds = set.intersection(*(set(mine[d]["by_seed"]) & set(theirs[d]["by_seed"]) for d in datasets))
    if not seeds:
        return None
    diffs = np.array([np.mean([mine[d]["by_seed"][s] - theirs[d]["by_seed"][s] for d in datasets]) for s in sorted(seeds)])
    return PairedDifference(mean=float(diffs.mean()), std=float(diffs.std()), n_seeds=len(seeds),
                            n_datasets=len(datasets), n_wins=int((diffs > 0).sum()))


def _paired_lines(sub: Summary, methods: list[str], baseline: str) -> list[str]:
    if not any(m == baseline for (_, _, m) in sub):
        return []
    lines = [f"### Paired against {baseline}", "",
             f"Per seed: the method's mean AUC-PR (trapz) over the datasets both ran minus {baseline}'s; mean ±",
             "population std over the seeds both ran on all of them. \"above spread\": the mean is above the std.", "",
             "| method | difference | seeds | datasets | seeds won | above spread |", "|---|---|---|---|---|---|"]
    for m in methods:
        paired = None if m == baseline else paired_difference(sub, m, baseline)
        if paired is not None:
            lines.append(f"| {m} | {paired.mean:+.4f} ± {paired.std:.4f} | {paired.n_seeds} | {paired.n_datasets} "
                         f"| {paired.n_wins} of {paired.n_seeds} | {'yes' if paired.beats_spread else 'no'} |")
    return [*lines, ""]


def _cell(entry: dict[str, Any] | None, metric: str, is_best: bool) -> str:
    if entry is None:
        return "—"
    mean, std = entry[metric]
    if not math.isfinite(mean):
        return f"failed ({entry['n_failed']}/{entry['n_runs']})"
    text = f"{mean:.3f}±{std:.3f}"
    if entry["n_failed"]:
        text += f" ({entry['n_failed']} failed)"
    return f"**{text}**" if is_best else text


def _markdown(summary: Summary, paired_baseline: str | None = None) -> str:
    methods = _ordered_methods(summary)
    contaminations = sorted({c for (c, _, _) in summary}, key=lambda c: (c != "natural", c))
    lines = [
        "# Benchmark results",
        "",
        "Mean ± std over seeds on the test part (35 %) of the reference protocol (`benchmarks/protocol.py`);",
        "best mean per dataset in bold. Rebuild with `protoguard bench` (it resumes) or from `results.csv`.",
        "",
    ]
    for cont in contaminations:
        datasets = sorted({d for (c, d, _) in summary if c == cont})
        sub = {k: v for k, v in summary.items() if k[0] == cont}
        seeds = max(v["n_runs"] for v in sub.values())
        lines += [f"## Contamination: {cont}", "", f"Up to {seeds} seeds per cell.", ""]
        for metric, title in _METRICS:
            lines += [f"### {title}", "", "| dataset | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
            for dataset in datasets:
                entries = {m: sub.get((cont, dataset, m)) for m in methods}
                finite = [e[metric][0] for e in entries.values() if e is not None and math.isfinite(e[metric][0])]
                best = max(finite) if finite else math.nan
                cells = [_cell(e, metric, e is not None and e[metric][0] == best) for e in entries.values()]
                lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
            lines.append("")
        rank_trapz, rank_ap, rank_roc = (mean_ranks(sub, m) for m, _ in _METRICS)
        lines += ["### Mean rank (1 = best) and mean fit time", "",
                  "Methods with fewer datasets are ranked against the full-coverage methods on the datasets they ran.", "",
                  "Mean AUC-PR is the unweighted mean over the method's datasets of its per-dataset means (a failed",
                  "cell counts as 0); it is comparable across methods only at equal coverage.", "",
                  "Seed spread: the std over seeds of the per-seed mean AUC-PR (trapz) over the method's datasets",
                  "(seeds that ran on all of them).", "",
                  "| method | rank AUC-PR (trapz) | rank AUC-PR (AP) | rank AUC-ROC | mean AUC-PR (trapz) | seed spread "
                  "| mean AUC-PR (AP) | datasets | seeds | mean fit s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in sorted(methods, key=lambda m: rank_trapz.get(m, math.inf)):
            if m not in rank_trapz:
                continue
            n_datasets = sum(1 for (_, _, mm) in sub if mm == m)
            fits = [v["fit_s"][0] for (_, _, mm), v in sub.items() if mm == m and math.isfinite(v["fit_s"][0])]
            fit = f"{np.mean(fits):.1f}" if fits else "—"
            seeds_m = sorted({v["n_runs"] for (_, _, mm), v in sub.items() if mm == m})
            seeds_text = "/".join(str(n) for n in seeds_m)
            means = {metric: np.mean([np.nan_to_num(v[metric][0]) for (_, _, mm), v in sub.items() if mm == m])
                     for metric in ("auc_pr_trapz", "auc_pr")}
            spread = seed_spread(sub, m)[1]
            lines.append(f"| {m} | {rank_trapz[m]:.2f} | {rank_ap[m]:.2f} | {rank_roc[m]:.2f} | {means['auc_pr_trapz']:.3f} "
                         f"| {spread:.3f} | {means['auc_pr']:.3f} | {n_datasets} | {seeds_text} | {fit} |")
        lines.append("")
        if paired_baseline is not None:
            lines += _paired_lines(sub, methods, paired_baseline)
    return "\n".join(lines)


def _plot(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless benchmark machines have no display
    import matplotlib.pyplot as plt

    methods = _ordered_methods(summary)
    contaminations = sorted({c for (c, _, _) in summary}, key=lambda c: (c != "natural", c))
    datasets = sorted({d for (_, d, _) in summary})
    width_in = min(24.0, max(8.0, 0.13 * len(datasets) * max(1, len(methods))))
    fig, axes = plt.subplots(len(contaminations), 1, figsize=(width_in, 5 * len(contaminations)), squeeze=False)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(datasets))
    cmap = plt.get_cmap("tab20")
    for ax, cont in zip(axes[:, 0], contaminations):
        for j, m in enumerate(methods):
            means = [summary.get((cont, d, m), {"auc_pr": (math.nan, math.nan)})["auc_pr"][0] for d in datasets]
            stds = [summary.get((cont, d, m), {"auc_pr": (math.nan, math.nan)})["auc_pr"][1] for d in datasets]
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds),
                   label=m, color=cmap(j % 20), error_kw={"elinewidth": 0.5})
        ax.set_xticks(x, datasets, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("AUC-PR (average precision)")
        ax.set_ylim(0, 1.15)  # headroom for the legend above the bars
        ax.set_title(f"Mean AUC-PR over seeds (a cell whose runs all failed is drawn at 0), contamination: {cont}")
        ax.legend(fontsize=8, ncol=len(methods), loc="upper center", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results_csv: Path, out_dir: Path, paired_baseline: str | None = None) -> tuple[Path, Path]:
    """Write ``results.md`` and ``auc_pr.png`` next to the CSV's summary; return both paths.

    With ``paired_baseline`` each contamination section ends with every method's paired difference
    against that method. An existing results.md's leading provenance comment is kept.
    """
    summary = summarise(read_results(results_csv))
    md_path, png_path = out_dir / "results.md", out_dir / "auc_pr.png"
    kept = _PROVENANCE.match(md_path.read_text()) if md_path.exists() else None
    body = _markdown(summary, paired_baseline) + "\n" if summary else "# Benchmark results\n\nNo runs yet.\n"
    md_path.write_text((kept.group(0) if kept else "") + body)
    if summary:
        _plot(summary, png_path)
    return md_path, png_path


def main(argv: list[str] | None = None) -> int:
    """Rebuild a report from a results.csv (merged shards, or a paired view added after the run)."""
    parser = argparse.ArgumentParser(prog="python -m protoguard.benchmarks.report", description=main.__doc__)
    parser.add_argument("results_csv", type=Path)
    parser.add_argument("--paired-baseline", default=None, help="method to read every other method against, per seed")
    args = parser.parse_args(argv)
    md_path, _ = write_report(args.results_csv, args.results_csv.parent, args.paired_baseline)
    print(md_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
