"""MNP fit time and scoring throughput on UNSW-NB15 with the product parameters, on CPU (or a GPU).

What it measures: ``MNPDetector(**PRODUCT_MNP_PARAMS)`` (the retraining defaults of
``trainer/training.py``) fitted on the training part of ``unsw_nb15_backdoor.npz`` under the
benchmark protocol (``benchmarks/protocol.py``: 57k rows x 196 features, 1 % of the training
anomalies labelled), then ``score`` on the test part in batches of ``--batch`` rows (default 4096),
timed over ``--repeats`` passes after one warm-up pass. Events/s = rows scored / wall time of
``score`` calls, scaling included (``score`` takes raw features); AUC-PR of that fit is printed too
so a fast-but-broken model shows. Writes ``benchmarks/results/mnp_speed.json``.

Run (2 shared cores, one torch thread, low priority)::

    nice -n 15 python -m protoguard.benchmarks.mnp_speed --threads 1 --seeds 42,43,44

``--threads`` sets ``torch.set_num_threads``; ``--device cuda`` runs on a GPU when there is one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

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


def _throughput(det: MNPDetector, X: np.ndarray, batch: int, repeats: int) -> list[float]:
    """Events/s of ``score`` over all of ``X`` in ``batch``-row calls, one value per repeat."""
    batches = [X[i:i + batch] for i in range(0, len(X), batch)]
    det.score(batches[0])  # warm-up (allocator, lazy init)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for b in batches:
            det.score(b)
        rates.append(len(X) / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA)
    parser.add_argument("--seeds", default="42,43,44", help="one fit per seed (default 42,43,44)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--members", type=int, default=PRODUCT_MNP_PARAMS["n_members"],
                        help=f"n_members (default the product's {PRODUCT_MNP_PARAMS['n_members']})")
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = {**PRODUCT_MNP_PARAMS, "n_members": args.members}
    console = Console(width=140)  # the table stays readable when piped to a log
    split = split_reference(args.data)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        det = MNPDetector(**{**params, "device": args.device, "random_state": seed})
        started = time.perf_counter()
        det.fit(split.X_train, split.semi_y)
        fit_s = time.perf_counter() - started
        rates = _throughput(det, split.X_test, args.batch, args.repeats)
        metrics = detection_metrics(split.y_test, det.score(split.X_test))
        summary = det.training_summary_
        runs.append({
            "seed": seed, "fit_s": round(fit_s, 2), "events_per_s_median": round(statistics.median(rates)),
            "events_per_s_all": [round(r) for r in rates], "auc_pr": round(metrics["auc_pr_trapz"], 4),
            "auc_roc": round(metrics["auc_roc"], 4), "pretrain_epochs": summary.get("pretrain_epochs"),
            "epochs": summary["epochs"], "stop_reason": summary["stop_reason"], "n_prototypes": summary["n_prototypes"],
        })
        console.print(f"seed {seed}: fit {fit_s:.1f} s, {statistics.median(rates):,.0f} events/s, AUC-PR {runs[-1]['auc_pr']:.3f}")
    fits = [r["fit_s"] for r in runs]
    eps = [r["events_per_s_median"] for r in runs]
    result = {
        "dataset": args.data.stem, "n_train": len(split.X_train), "n_features": split.X_train.shape[1],
        "n_labelled": int(split.semi_y.sum()), "n_scored": len(split.X_test), "batch": args.batch,
        "repeats": args.repeats, "torch_threads": args.threads, "device": str(det.device_),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "params": params,
        "fit_s_mean": round(statistics.mean(fits), 2), "fit_s_std": round(statistics.pstdev(fits), 2),
        "events_per_s_mean": round(statistics.mean(eps)), "events_per_s_std": round(statistics.pstdev(eps)),
        "runs": runs,
    }
    table = Table(title=f"MNP on {args.data.stem}: {result['n_train']} x {result['n_features']} train, "
                        f"{args.threads} torch thread(s), {result['device']}")
    for col in ("seed", "fit s", "epochs (pre / joint)", "K", f"events/s @ {args.batch}", "AUC-PR", "AUC-ROC"):
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
