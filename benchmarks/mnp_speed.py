"""MNP fit time and scoring throughput on UNSW-NB15 with the product parameters, on CPU (or a GPU).

What it measures: ``MNPDetector(**PRODUCT_MNP_PARAMS)`` (the retraining defaults of
``trainer/training.py``) fitted on the training part of ``unsw_nb15_backdoor.npz`` under the
benchmark protocol (``benchmarks/protocol.py``: 57k rows x 196 features, 1 % of the training
anomalies labelled), then ``score`` on the test part in batches of ``--batch`` rows (default
4096; a comma list times each size on the same fit), timed over ``--repeats`` passes after one
warm-up pass. Events/s = rows scored / wall time of ``score`` calls, scaling included (``score``
takes raw features); AUC-PR of that fit is printed too so a fast-but-broken model shows. Writes
``benchmarks/results/mnp_speed.json``.

``--compare-per-member`` also times a per-member path, the baseline for the stacked forward
(``trainer/detectors/mnp_stacked.py``): numpy scaling, then each member's network in turn,
averaged. Both are timed on the same fit, interleaved repeat by repeat, so a shared machine's load
affects both alike (the speed-up is the robust number, the absolute rates are not).

Run (2 shared cores, one torch thread, low priority)::

    nice -n 15 python -m protoguard.benchmarks.mnp_speed --threads 1 --seeds 42,43,44

``--threads`` sets ``torch.set_num_threads``; ``--device cuda`` runs on a GPU when there is one.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ..trainer.detectors.mnp import MNPDetector
from ..trainer.evaluation import detection_metrics
from ..trainer.training import PRODUCT_MNP_PARAMS
from .protocol import split_reference

_REPO_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = _REPO_ROOT.parent / "shared" / "datasets" / "tabular" / "unsw_nb15_backdoor.npz"
_DEFAULT_OUT = _REPO_ROOT / "benchmarks" / "results" / "mnp_speed.json"


def per_member_score(det: MNPDetector, X: np.ndarray) -> np.ndarray:
    """``MNPDetector.score`` without the stacked forward: one member network at a time (the baseline)."""
    Xt = det._prepared(X)
    if len(det.members_) == 1:
        return det._forward_scores(det.network_, Xt)
    return np.mean([det._forward_scores(m, Xt) for m in det.members_], axis=0).astype(np.float32)


def _throughput(score: Callable[[np.ndarray], Any], X: np.ndarray, batch: int, repeats: int,
                other: Callable[[np.ndarray], Any] | None = None) -> list[tuple[list[float], list[float]]]:
    """Events/s of ``score`` (and of ``other``, interleaved) over all of ``X`` in ``batch``-row calls,
    one value per repeat: (per wall second, per CPU second of this process) for each function.

    Events per CPU second is reported because the 2-core dev box is shared: other jobs take wall
    time from us, not (much) CPU time; on a GPU it is host time only and means little.
    """
    batches = [X[i:i + batch] for i in range(0, len(X), batch)]
    fns = [score] if other is None else [score, other]
    rates: list[tuple[list[float], list[float]]] = [([], []) for _ in fns]
    for fn in fns:
        fn(batches[0])  # warm-up (allocator, lazy init)
    for _ in range(repeats):
        for fn, (wall, cpu) in zip(fns, rates):
            started, started_cpu = time.perf_counter(), time.process_time()
            for b in batches:
                fn(b)
            wall.append(len(X) / (time.perf_counter() - started))
            cpu.append(len(X) / max(time.process_time() - started_cpu, 1e-9))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA)
    parser.add_argument("--seeds", default="42,43,44", help="one fit per seed (default 42,43,44)")
    parser.add_argument("--batch", default="4096", help="rows per score call; a comma list times each (default 4096)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--members", type=int, default=PRODUCT_MNP_PARAMS["n_members"],
                        help=f"n_members (default the product's {PRODUCT_MNP_PARAMS['n_members']})")
    parser.add_argument("--compare-per-member", action="store_true",
                        help="also time the per-member path score used before the stacked forward")
    parser.add_argument("--no-screen", action="store_true",
                        help="fit without the pool screen (screen_pool=False): the product before issue 12's round 15")
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in str(args.batch).split(",")]
    torch.set_num_threads(args.threads)
    params = {**PRODUCT_MNP_PARAMS, "n_members": args.members, **({"screen_pool": False} if args.no_screen else {})}
    console = Console(width=140)  # the table stays readable when piped to a log
    split = split_reference(args.data)
    load_start = os.getloadavg()[0]
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        det = MNPDetector(**{**params, "device": args.device, "random_state": seed})
        started = time.perf_counter()
        det.fit(split.X_train, split.semi_y)
        fit_s = time.perf_counter() - started
        by_batch: dict[str, Any] = {}
        for size in batch_sizes:
            other = functools.partial(per_member_score, det) if args.compare_per_member else None
            timed = _throughput(det.score, split.X_test, size, args.repeats, other)
            rates, cpu_rates = timed[0]
            entry = by_batch[str(size)] = {
                "events_per_s_median": round(statistics.median(rates)), "events_per_s_all": [round(r) for r in rates],
                "events_per_cpu_s_median": round(statistics.median(cpu_rates)),
            }
            line = f"seed {seed}, batch {size}: {statistics.median(rates):,.0f} events/s ({statistics.median(cpu_rates):,.0f} per CPU s)"
            if other is not None:
                before, before_cpu = timed[1]
                entry |= {
                    "per_member_events_per_s_median": round(statistics.median(before)),
                    "per_member_events_per_s_all": [round(r) for r in before],
                    "per_member_events_per_cpu_s_median": round(statistics.median(before_cpu)),
                    "speedup_median": round(statistics.median(a / b for a, b in zip(rates, before)), 3),
                    "speedup_cpu_median": round(statistics.median(a / b for a, b in zip(cpu_rates, before_cpu)), 3),
                }
                line += (f"; per-member path {statistics.median(before):,.0f} ({statistics.median(before_cpu):,.0f}),"
                         f" x{entry['speedup_median']:.2f} wall, x{entry['speedup_cpu_median']:.2f} CPU")
            console.print(line)
        first = by_batch[str(batch_sizes[0])]
        scores = det.score(split.X_test)
        metrics = detection_metrics(split.y_test, scores)
        summary = det.training_summary_
        runs.append({
            "seed": seed, "fit_s": round(fit_s, 2), "events_per_s_median": first["events_per_s_median"],
            "events_per_s_all": first["events_per_s_all"], "auc_pr": round(metrics["auc_pr_trapz"], 4),
            "auc_roc": round(metrics["auc_roc"], 4), "pretrain_epochs": summary.get("pretrain_epochs"),
            "epochs": summary["epochs"], "stop_reason": summary["stop_reason"], "n_prototypes": summary["n_prototypes"],
        })
        if len(batch_sizes) > 1 or args.compare_per_member:
            runs[-1]["by_batch"] = by_batch
        if args.compare_per_member:
            runs[-1]["max_abs_diff_vs_per_member"] = float(np.abs(scores - per_member_score(det, split.X_test)).max())
        console.print(f"seed {seed}: fit {fit_s:.1f} s, {first['events_per_s_median']:,} events/s, AUC-PR {runs[-1]['auc_pr']:.3f}")
    fits = [r["fit_s"] for r in runs]
    eps = [r["events_per_s_median"] for r in runs]
    result = {
        "dataset": args.data.stem, "n_train": len(split.X_train), "n_features": split.X_train.shape[1],
        "n_labelled": int(split.semi_y.sum()), "n_scored": len(split.X_test), "batch": batch_sizes[0],
        "repeats": args.repeats, "torch_threads": args.threads, "device": str(det.device_),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        # The dev box is shared: the load average says how much the wall-clock rates were squeezed.
        "load_avg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__, "params": params,
        "fit_s_mean": round(statistics.mean(fits), 2), "fit_s_std": round(statistics.pstdev(fits), 2),
        "events_per_s_mean": round(statistics.mean(eps)), "events_per_s_std": round(statistics.pstdev(eps)),
        "runs": runs,
    }
    table = Table(title=f"MNP on {args.data.stem}: {result['n_train']} x {result['n_features']} train, "
                        f"{args.threads} torch thread(s), {result['device']}")
    for col in ("seed", "fit s", "epochs (pre / joint)", "K", f"events/s @ {batch_sizes[0]}", "AUC-PR", "AUC-ROC"):
        table.add_column(col, justify="right")
    for r in runs:
        pre = "+".join(str(e) for e in r["pretrain_epochs"] or [])
        table.add_row(str(r["seed"]), f"{r['fit_s']:.1f}", f"{pre} / {r['epochs']} ({r['stop_reason']})",
                      str(r["n_prototypes"]), f"{r['events_per_s_median']:,}", f"{r['auc_pr']:.3f}", f"{r['auc_roc']:.3f}")
    table.add_row("mean±std", f"{result['fit_s_mean']:.1f}±{result['fit_s_std']:.1f}", "", "",
                  f"{result['events_per_s_mean']:,}±{result['events_per_s_std']:,}",
                  f"{statistics.mean(r['auc_pr'] for r in runs):.3f}", f"{statistics.mean(r['auc_roc'] for r in runs):.3f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
