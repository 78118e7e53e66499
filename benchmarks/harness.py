"""Run methods x datasets x seeds (x contamination levels) under the reference protocol, resumably.

Why a harness of its own: the numbers MNP is judged by (``shared/spec/mnp-reference-results.md``)
come from one protocol (``benchmarks/protocol.py``), and every method here sees exactly the same
split, the same labelled anomalies and, per seed, the same training rows. Each finished run is
appended to ``DIR/results.csv`` at once, so an interrupted benchmark loses one fit, and a rerun
skips every (dataset, method, seed, contamination) already there. A failed fit (exception or
non-finite scores) becomes a row with NaN metrics and the error text instead of stopping the run.

Methods (names as in the CLI):

- ``mnp``: the product's MNP, ``trainer.training.PRODUCT_MNP_PARAMS`` (label-frugal, three
  independent members averaged, the spec's likelihood weighting, 200-epoch budget, raw features
  to the scorer with one labelled anomaly, the pool screened before a second pretraining with 2+;
  issue 12's rounds 5, 8, 12 and 15, ``mnp-c18``);
- ``mnp-spec`` / ``mnp-off`` / ``mnp-rank`` / ``mnp-adaptive`` / ``mnp-rank-screen``: the weighting
  comparisons of the contamination benchmark, on ``mnp-v0``'s 30-epoch budget (the product before round 5);
- ``mnp-pre12``: what ``mnp`` was before issue 12 (200-epoch budget, the spec's weighting);
- ``mnp-m1``: ``mnp-pre12`` with one member (what it was before the members were added);
- ``mnp-faithful``: the reference code's behaviour (``variant="faithful"``) with the same labels
  as the peers (``validation="frugal"``);
- ``mnp-reference``: faithful and early-stopped on the fully labelled 5 % validation split, as
  the authors' code (a label leak: 4-8x more labelled anomalies than the peers get);
- ``mnp-noweight`` / ``mnp-k1``: ablations of ``mnp-m1`` (no likelihood weighting; one prototype);
- ``mnp-noweight-m3``: ``mnp-pre12`` (three members) without likelihood weighting;
- ``mnp-v0``, ``mnp-c1`` ... : issue 12's validation-part candidates (benchmarks/results/dev/issue12_decision.md);
- the peers of :mod:`protoguard.benchmarks.peers`: ``devnet``, ``deepsad``, ``prenet``,
  ``feawad``, ``rosas``, ``iforest``, ``hgb``.

``max_rows`` caps the training part for speed: all labelled anomalies are kept and the unlabelled
rows are subsampled uniformly (seeded by the run's seed, so all methods of one seed see the same
rows); the contamination share is kept in expectation and test/validation parts are untouched.

``evaluate_on="val"`` scores the 5 % validation part instead of the test part: a development
split for design decisions, so that the test part is only read for the reported table. Every method
except ``mnp-reference`` (refused there) trains without ever seeing the validation part.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..trainer.evaluation import detection_metrics
from ..trainer.training import PRODUCT_MNP_PARAMS
from .peers import FEAWAD, DeepSAD, DevNet, HGBPeer, IsolationForestPeer, PReNet, RoSAS
from .protocol import DatasetSplit, resample_contamination, split_reference

__all__ = [
    "METHOD_NAMES",
    "RESULT_COLUMNS",
    "build_method",
    "read_results",
    "run_benchmark",
    "run_one",
    "subsample_train",
]

RESULT_COLUMNS = (
    "dataset", "method", "seed", "contamination", "auc_pr", "auc_pr_trapz", "auc_roc",
    "fit_s", "score_s", "n_train", "n_labelled", "error",
)

_PRODUCT_BUDGET: dict[str, Any] = {"variant": "fixed", "validation": "frugal", "max_epochs": 30,
                                   "pretrain_max_epochs": 30, "patience": 5, "n_members": 3}
#: The product from stop 19 to round 5 of issue 12 (``mnp-v0``). The weighting comparisons keep it, so
#: that their names mean what the contamination benchmark's rows were fitted with.
_V0: dict[str, Any] = {**_PRODUCT_BUDGET, "weighting": "spec", "joint_stopping": "holdout"}

#: Issue 12's fifth round (the product from then to round 8): pre12's 200-epoch budget, raw features to the
#: scorer with one labelled anomaly.
_C9: dict[str, Any] = {"variant": "fixed", "validation": "frugal", "n_members": 3, "weighting": "spec",
                       "scorer_features": "auto"}

#: Round 8's product (c9 with 10 joint epochs when one anomaly is labelled) and round 12's (that schedule
#: at Adam rate 0.001; the product from then to round 15). Rounds 9-15 derive from these, not from
#: PRODUCT_MNP_PARAMS, so that each method keeps meaning what its rows were fitted with when the product
#: moves on.
_C9_E10: dict[str, Any] = {**_C9, "single_label_epochs": 10}
_C16: dict[str, Any] = {**_C9_E10, "single_label_joint_lr": 0.001}

#: MNP settings per method name (all take ``random_state`` and ``device`` on top).
_MNP_PARAMS: dict[str, dict[str, Any]] = {
    # The product's MNP (trainer.training.PRODUCT_MNP_PARAMS).
    "mnp": PRODUCT_MNP_PARAMS,
    # The weighting comparisons of the contamination benchmark, on v0's 30-epoch budget (their rows
    # in benchmarks/results/contamination_weighting/ were fitted so): spec form, none, the two rules.
    "mnp-spec": {**_V0, "weighting": "spec"},
    "mnp-off": {**_V0, "weighting": "off"},
    "mnp-adaptive": {**_V0, "weighting": "adaptive"},
    "mnp-rank": {**_V0, "weighting": "rank"},
    # ... and with the prototypes placed a second time by the rule's weights (weighted_prototypes).
    "mnp-rankwp": {**_V0, "weighting": "rank", "weighted_prototypes": True},
    # What `mnp` was before issue 12: the class defaults' 200-epoch budget with patience 15, 3 members,
    # the spec's weighting (rows of benchmarks/results/tabular/results.csv renamed from `mnp`).
    "mnp-pre12": {"variant": "fixed", "validation": "frugal", "n_members": 3, "weighting": "spec"},
    "mnp-m1": {"variant": "fixed", "validation": "frugal", "weighting": "spec"},
    "mnp-faithful": {"variant": "faithful", "validation": "frugal", "weighting": "spec"},
    "mnp-reference": {"variant": "faithful", "validation": "reference", "weighting": "spec"},
    "mnp-noweight": {"variant": "fixed", "validation": "frugal", "weighting": "off"},
    "mnp-k1": {"variant": "fixed", "validation": "frugal", "n_prototypes": 1, "weighting": "spec"},
    "mnp-noweight-m3": {"variant": "fixed", "validation": "frugal", "weighting": "off", "n_members": 3},
    # Issue 12 development candidates, all on the product's budget (PRODUCT_MNP_PARAMS before the
    # issue: 30 joint / 30 pretraining epochs, patience 5, 3 members); decision record in
    # benchmarks/results/dev/issue12_decision.md.
    "mnp-v0": _V0,
    "mnp-c1": {**_PRODUCT_BUDGET, "weighting": "adaptive", "joint_stopping": "holdout"},
    "mnp-c2": {**_PRODUCT_BUDGET, "weighting": "adaptive", "joint_stopping": "fixed", "tail_average": 0.5},
    # c4 = c1 with 2+ labelled anomalies and c2 with one (joint_stopping="auto"): the same fits.
    "mnp-c4": {**_PRODUCT_BUDGET, "weighting": "adaptive", "joint_stopping": "auto", "tail_average": 0.5},
    # Second round, with the few-label guard of the adaptive weighting in the code (spec form below 2
    # training anomalies): c5 has c1's parameters, c6 c4's.
    "mnp-c5": {**_PRODUCT_BUDGET, "weighting": "adaptive", "joint_stopping": "holdout"},
    "mnp-c6": {**_PRODUCT_BUDGET, "weighting": "adaptive", "joint_stopping": "auto", "tail_average": 0.5},
    "mnp-c3": {**_PRODUCT_BUDGET, "weighting": "adaptive", "joint_stopping": "fixed", "tail_average": 0.5,
               "scorer_features": True},
    # Third round (benchmarks/results/dev/issue12_fewlabel_decision.md): v0 (the product) with the
    # scaled raw features fed to the scorer as well.
    "mnp-c7": {**_PRODUCT_BUDGET, "weighting": "spec", "joint_stopping": "holdout", "scorer_features": True},
    # Fourth round (benchmarks/results/dev/issue12_fewlabel_round4.md): c7 only below 2 labelled anomalies.
    "mnp-c8": {**_PRODUCT_BUDGET, "weighting": "spec", "joint_stopping": "holdout", "scorer_features": "auto"},
    # Fifth round (benchmarks/results/dev/issue12_round5_c9.md): pre12's budget with c8's gate.
    "mnp-c9": _C9,
    # ... and without likelihood weighting: the weighting at the product's budget (issue12_weighting_c9_budget.md).
    "mnp-c9-off": {**_C9, "weighting": "off"},
    # Sixth round (benchmarks/results/dev/issue12_round6_members.md): c9 with five members.
    "mnp-c10": {**_C9, "n_members": 5},
    # Seventh round (benchmarks/results/dev/issue12_round7_fewlabel_members.md): five members only with one label.
    "mnp-c11": {**_C9, "single_label_members": 5},
    # Eighth round (benchmarks/results/dev/issue12_round8_single_label_epochs.md): c9 with another joint epoch
    # count where a single anomaly is labelled (c9 = 20).
    **{f"mnp-c9-e{n}": {**_C9, "single_label_epochs": n} for n in (10, 50, 100)},
    # Ninth round (benchmarks/results/dev/issue12_round9_holdout_signal.md): the product of then (c9-e10) with
    # the joint stage early-stopped on the hold-out's AUC-ROC alone.
    "mnp-c12": {**_C9_E10, "holdout_signal": "roc"},
    # Tenth round (benchmarks/results/dev/issue12_round10_joint_lr.md): c9-e10 with a smaller Adam rate in
    # the joint stage only (the spec's is 0.005 for every stage).
    "mnp-c13": {**_C9_E10, "joint_lr": 0.0025},
    "mnp-c14": {**_C9_E10, "joint_lr": 0.001},
    # Eleventh round (benchmarks/results/dev/issue12_round11_weight_average.md): c9-e10 with the hold-out
    # reading an exponential average of the joint stage's weights over about one epoch.
    "mnp-c15": {**_C9_E10, "joint_average_epochs": 1.0},
    # Twelfth round (benchmarks/results/dev/issue12_round12_single_label_lr.md): c14's rate only where a
    # single anomaly is labelled (there it is c14's fit, bit for bit); adopted, the product until round 15.
    "mnp-c16": _C16,
    # Thirteenth round (benchmarks/results/dev/issue12_round13_holdout_refit.md): c16 where the hold-out only
    # picks the joint epoch count; each member is trained again that long on every labelled anomaly.
    "mnp-c17": {**_C16, "holdout_refit": True},
    # Fourteenth round (benchmarks/results/dev/issue12_round14_screened_pool.md): the rank weighting on v0's
    # budget with the pool screened before a second pretraining (the contamination comparison's setting).
    "mnp-rank-screen": {**_V0, "weighting": "rank", "screen_pool": True},
    # Fifteenth round (benchmarks/results/dev/issue12_round15_screen_product.md): the product (c16) with the
    # pool screened, at natural contamination; adopted, today's PRODUCT_MNP_PARAMS.
    "mnp-c18": {**_C16, "screen_pool": True},
    # Sixteenth round (benchmarks/results/dev/issue12_round16_score_screen.md): round 14's setting with the
    # rows left out chosen by a jointly trained first fit's scorer instead of its normality.
    "mnp-score-screen": {**_V0, "weighting": "rank", "screen_pool": True, "screen_by": "score"},
    # Seventeenth round (benchmarks/results/dev/issue12_round17_raw_features.md): the product (c18) with the
    # scaled raw features fed to the scorer at every label count, not only below 2.
    "mnp-c19": {**_C16, "screen_pool": True, "scorer_features": True},
}

_PEERS: dict[str, Callable[..., Any]] = {
    "devnet": DevNet, "deepsad": DeepSAD, "prenet": PReNet, "feawad": FEAWAD, "rosas": RoSAS,
}

METHOD_NAMES: tuple[str, ...] = (*_MNP_PARAMS, *_PEERS, "iforest", "hgb")

#: Natural contamination (whatever the split leaves unlabelled) is written as this word in the CSV.
NATURAL = "natural"


def build_method(name: str, seed: int, *, max_fit_s: float = 120.0) -> Any:
    """An unfitted detector for a method name; unknown names list the valid ones."""
    if name in _MNP_PARAMS:
        from ..trainer.detectors.mnp import MNPDetector  # lazy: peers-only runs need not import MNP

        return MNPDetector(**_MNP_PARAMS[name], random_state=seed, device="auto")
    if name in _PEERS:
        return _PEERS[name](random_state=seed, max_fit_s=max_fit_s)
    if name == "iforest":
        return IsolationForestPeer(random_state=seed)
    if name == "hgb":
        return HGBPeer(random_state=seed)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")


def subsample_train(split: DatasetSplit, max_rows: int | None, random_state: int) -> DatasetSplit:
    """Keep every labelled anomaly and a uniform sample of unlabelled rows, ``max_rows`` in all."""
    if max_rows is None or len(split.X_train) <= max_rows:
        return split
    rng = np.random.default_rng(random_state)
    labelled = np.flatnonzero(split.semi_y == 1)
    unlabelled = np.flatnonzero(split.semi_y == 0)
    n_keep = max(1, max_rows - len(labelled))
    keep = np.sort(np.concatenate([labelled, rng.choice(unlabelled, min(n_keep, len(unlabelled)), replace=False)]))
    return dataclasses.replace(split, X_train=split.X_train[keep], y_train=split.y_train[keep], semi_y=split.semi_y[keep])


def _contamination_key(contamination: float | None) -> str:
    return NATURAL if contamination is None else f"{contamination:g}"


EvaluationPart = Literal["test", "val"]


def run_one(split: DatasetSplit, method: str, seed: int, *, contamination: float | None = None,
            max_rows: int | None = None, max_fit_s: float = 120.0, evaluate_on: EvaluationPart = "test") -> dict[str, Any]:
    """Fit and score one method on one split; never raises for a failed fit (the row says why)."""
    if evaluate_on == "val" and method == "mnp-reference":
        raise ValueError("mnp-reference early-stops on the validation part, so it cannot be evaluated on it")
    X_eval, y_eval = (split.X_test, split.y_test) if evaluate_on == "test" else (split.X_val, split.y_val)
    run_split = split if contamination is None else resample_contamination(split, contamination, random_state=seed)
    run_split = subsample_train(run_split, max_rows, random_state=seed)
    row: dict[str, Any] = {
        "dataset": split.name, "method": method, "seed": seed, "contamination": _contamination_key(contamination),
        "auc_pr": math.nan, "auc_pr_trapz": math.nan, "auc_roc": math.nan, "fit_s": math.nan, "score_s": math.nan,
        "n_train": len(run_split.X_train), "n_labelled": int(run_split.semi_y.sum()), "error": "",
    }
    try:
        model = build_method(method, seed, max_fit_s=max_fit_s)
        started = time.perf_counter()
        if method == "mnp-reference":
            model.fit(run_split.X_train, run_split.semi_y, X_val=run_split.X_val, y_val=run_split.y_val)
        else:
            model.fit(run_split.X_train, run_split.semi_y)
        row["fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        scores = np.asarray(model.score(X_eval), dtype=np.float64)
        row["score_s"] = time.perf_counter() - started
    except Exception as exc:  # a broken peer must not end a 40-minute run; the row records it
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        traceback.print_exc()
        return row
    if not np.all(np.isfinite(scores)):
        row["error"] = f"non-finite scores ({int((~np.isfinite(scores)).sum())} of {len(scores)})"
        return row
    row.update(detection_metrics(y_eval, scores))
    return row


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv with numbers parsed (NaN for empty/failed metrics); [] if absent."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in ("auc_pr", "auc_pr_trapz", "auc_roc", "fit_s", "score_s"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else math.nan
        row.setdefault("error", "")
    return rows


def _done_keys(rows: list[dict[str, Any]]) -> set[tuple[str, str, int, str]]:
    return {(r["dataset"], r["method"], int(r["seed"]), r["contamination"]) for r in rows}


def run_benchmark(
    datasets: Sequence[Path], methods: Sequence[str], seeds: Sequence[int], out_dir: Path, *,
    contaminations: Sequence[float | None] = (None,), max_rows: dict[str, int] | int | None = None,
    max_fit_s: float = 120.0, console: Console | None = None, evaluate_on: EvaluationPart = "test",
    paired_baseline: str | None = None,
) -> Path:
    """Run every missing (dataset, method, seed, contamination) and rewrite the report; return results.csv.

    ``max_rows`` is one cap for all datasets or a per-dataset-stem mapping. The report
    (``results.md``, ``auc_pr.png``) is refreshed after each dataset, so partial runs are readable;
    ``paired_baseline`` adds each method's per-seed difference against that method to it.
    """
    from .report import write_report  # matplotlib is imported only when a report is written

    for name in methods:
        if name not in METHOD_NAMES:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    torch.set_num_threads(1)  # the benchmark machine's cores are shared; one heavy job, one thread
    out_dir.mkdir(parents=True, exist_ok=True)
    results_csv = out_dir / "results.csv"
    done = _done_keys(read_results(results_csv))
    todo = [
        (path, c, m, s) for path in datasets for c in contaminations for m in methods for s in seeds
        if (path.stem, m, s, _contamination_key(c)) not in done
    ]
    console = console or Console(stderr=True)
    if not results_csv.exists():
        with results_csv.open("w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=RESULT_COLUMNS).writeheader()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("bench", total=len(todo))
        split: DatasetSplit | None = None
        for i, (path, contamination, method, seed) in enumerate(todo):
            if split is None or split.name != path.stem:
                split = split_reference(path)
            cap = max_rows.get(path.stem) if isinstance(max_rows, dict) else max_rows
            progress.update(task, description=f"{path.stem} {method} seed={seed} c={_contamination_key(contamination)}")
            row = run_one(split, method, seed, contamination=contamination, max_rows=cap, max_fit_s=max_fit_s,
                          evaluate_on=evaluate_on)
            with results_csv.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=RESULT_COLUMNS).writerow(row)
            progress.console.print(
                f"{row['dataset']:<28} {method:<14} seed={seed} c={row['contamination']:<7} "
                f"ap={row['auc_pr']:.3f} trapz={row['auc_pr_trapz']:.3f} roc={row['auc_roc']:.3f} "
                f"fit={row['fit_s']:.1f}s n={row['n_train']} {row['error']}",
                soft_wrap=True,
            )
            progress.advance(task)
            is_last_of_dataset = i + 1 == len(todo) or todo[i + 1][0] != path
            if is_last_of_dataset:
                write_report(results_csv, out_dir, paired_baseline)
    if not todo:
        write_report(results_csv, out_dir, paired_baseline)
    return results_csv
