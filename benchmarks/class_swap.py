"""Class-swap benchmark: normal events presented with the wrong claimed class, mixed with real anomalies.

Run::

    python -m protoguard.benchmarks.class_swap --seeds 0 --out benchmarks/results/class_swap

Why: protoguard's class-aware detectors (HGAD, gauss) serve events whose class is known (device
type, tenant, service: ``Event.kind``). An event that is perfectly normal for *some* class but
arrives claiming another one (a spoofed device type, a flow on the wrong service) is an anomaly
only a class-conditional model can see; class-agnostic detectors score it as normal by design.
The unified MVTec benchmark has no such anomalies, so it cannot show what class conditioning buys.

Datasets (both in ``shared/datasets``):

- **MVTec** ResNet-18 embeddings, the unified split and PCA-64 of ``benchmarks/unified.py``; the
  class is the category. Per category, ``N_SWAP`` test normals of the other categories (drawn
  uniformly, split seed) are added to its test set claiming the category.
- **UNSW-NB15** backdoor flows (``tabular/unsw_nb15_backdoor.npz``); the class is the flow's
  *service* (the one-hot ``service=*`` columns; ``-`` = none). Features: the 39 numeric columns
  (the one-hot proto/service/state columns are dropped: categoricals are not fed to a flow, spec
  section 7). Services with fewer than 100 normal flows (pop3, radius, snmp) are dropped; so are
  the 11 attacks on ``irc``, a service without normal traffic (no class to claim). Per service: at
  most 1,200 normals for training (15 % of them the validation slice) and 400 test normals, all
  attacks of the service (at most 300), plus ``N_SWAP`` test normals of other services claiming it.

Metrics: AUROC and AP per class on three anomaly sets, each against the class's test normals:
``swap`` (class-swapped normals), ``genuine`` (the dataset's anomalies) and ``all`` (both); then
the mean over classes (UNSW: over the services that have genuine anomalies for ``genuine``).

Methods: claimed-class scorers ``hgad``, ``gauss`` (GaussDetector), ``flow-per-class``,
``knn-per-class`` (distance to the nearest training normal of the claimed class); class-agnostic
``hgad-agnostic`` (the same HGAD, class unknown), ``flow-single-prior``, ``knn-pooled`` and
``iforest``. HGAD uses its defaults (chosen on the MVTec validation slices, see
``results/unified/decision.md``) with the unified benchmark's epochs/batch.
"""
from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from ..trainer.detectors import GaussDetector, HGADDetector
from .unified import DEFAULT_DATA_DIR, HGAD_PARAMS, PLAIN_FLOW_PARAMS, SPLIT_SEED, load_unified_split

__all__ = ["SwapSplit", "main", "mvtec_swap_split", "run_methods", "unsw_swap_split"]

#: Class-swapped normals added per class: about a fifth of a class's test set in both datasets,
#: enough for a stable per-class AUROC without drowning the genuine anomalies.
N_SWAP = 40
UNSW_PATH = DEFAULT_DATA_DIR.parent / "tabular" / "unsw_nb15_backdoor.npz"
_UNSW_MIN_NORMALS = 100
_UNSW_MAX_POOL = 1200
_UNSW_MAX_TEST_NORMALS = 400
_UNSW_MAX_ATTACKS = 300


@dataclass(frozen=True)
class SwapSplit:
    """Training/validation normals with classes; test rows with claimed class, label and kind."""

    name: str
    classes: list[str]
    X_fit: npt.NDArray[np.float32]
    c_fit: npt.NDArray[np.str_]
    X_val: npt.NDArray[np.float32]
    c_val: npt.NDArray[np.str_]
    X_test: npt.NDArray[np.float32]
    c_test: npt.NDArray[np.str_]
    #: "normal", "genuine" or "swap"
    kind_test: npt.NDArray[np.str_]


def _add_swaps(classes: list[str], X_test: np.ndarray, c_test: np.ndarray, kind: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append N_SWAP test normals of other classes per class, claiming that class."""
    normals = np.flatnonzero(kind == "normal")
    parts_X, parts_c = [X_test], [c_test]
    for cls in classes:
        donors = normals[c_test[normals] != cls]
        pick = rng.choice(donors, size=min(N_SWAP, len(donors)), replace=False)
        parts_X.append(X_test[pick])
        parts_c.append(np.full(len(pick), cls))
    n_swap = sum(len(p) for p in parts_c[1:])
    return np.concatenate(parts_X), np.concatenate(parts_c), np.r_[kind, np.full(n_swap, "swap")]


def mvtec_swap_split(pca_dim: int = 64) -> SwapSplit:
    """The unified MVTec split with class-swapped test normals added."""
    u = load_unified_split(DEFAULT_DATA_DIR, pca_dim)
    kind = np.where(u.y_test == 1, "genuine", "normal")
    X, c, k = _add_swaps(u.categories, u.X_test, u.c_test, kind, np.random.default_rng(SPLIT_SEED + 1))
    return SwapSplit("mvtec", u.categories, u.X_fit, u.c_fit, u.X_val, u.c_val, X.astype(np.float32), c, k)


def unsw_swap_split(path: Path = UNSW_PATH) -> SwapSplit:
    """UNSW-NB15 flows with the service as the class (see the module docstring)."""
    with np.load(path, allow_pickle=False) as data:
        X, y, names = np.asarray(data["X"], dtype=np.float32), np.asarray(data["y"]).astype(int), [str(n) for n in data["feature_names"]]
    service_cols = [i for i, n in enumerate(names) if n.startswith("service=")]
    numeric = [i for i, n in enumerate(names) if not n.startswith(("service=", "proto=", "state="))]
    service = np.array([names[i].removeprefix("service=") for i in service_cols])[X[:, service_cols].argmax(1)]
    classes = sorted(str(s) for s in np.unique(service) if (service[y == 0] == s).sum() >= _UNSW_MIN_NORMALS)
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("X_fit", "c_fit", "X_val", "c_val", "X_test", "c_test", "k_test")}
    for cls in classes:
        normals = rng.permutation(np.flatnonzero((service == cls) & (y == 0)))
        n_pool = min(_UNSW_MAX_POOL, int(round(0.6 * len(normals))))
        n_val = int(round(0.15 * n_pool))
        test_normals = normals[n_pool : n_pool + _UNSW_MAX_TEST_NORMALS]
        attacks = np.flatnonzero((service == cls) & (y == 1))
        attacks = rng.choice(attacks, size=min(_UNSW_MAX_ATTACKS, len(attacks)), replace=False)
        test = np.r_[test_normals, attacks]
        for key, rows in (("X_fit", normals[n_val:n_pool]), ("X_val", normals[:n_val]), ("X_test", test)):
            parts[key].append(X[rows][:, numeric])
            parts[key.replace("X_", "c_")].append(np.full(len(rows), cls))
        parts["k_test"].append(np.r_[np.full(len(test_normals), "normal"), np.full(len(attacks), "genuine")])
    a = {k: np.concatenate(v) for k, v in parts.items()}
    X_t, c_t, k_t = _add_swaps(classes, a["X_test"], a["c_test"], a["k_test"], np.random.default_rng(SPLIT_SEED + 1))
    return SwapSplit("unsw_service", classes, a["X_fit"], a["c_fit"], a["X_val"], a["c_val"], X_t, c_t, k_t)


# ----------------------------------------------------------------------------- methods
def _per_class(split: SwapSplit, fit_score: Callable[[np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]) -> np.ndarray:
    """Fit one model per class and score each test row with the model of its *claimed* class."""
    scores = np.empty(len(split.X_test))
    for cls in split.classes:
        rows = split.c_test == cls
        scores[rows] = fit_score(split.X_fit[split.c_fit == cls], split.X_val[split.c_val == cls], split.X_test[rows], cls)
    return scores


def _flow_per_class(split: SwapSplit, seed: int) -> np.ndarray:
    def fit_score(X_fit: np.ndarray, X_val: np.ndarray, X_test: np.ndarray, cls: str) -> np.ndarray:
        det = HGADDetector(**PLAIN_FLOW_PARAMS, random_state=seed)  # type: ignore[arg-type]
        det.fit(X_fit, np.full(len(X_fit), cls), X_val=X_val, classes_val=np.full(len(X_val), cls))
        return det.score(X_test, cls)

    return _per_class(split, fit_score)


def _knn_per_class(split: SwapSplit, seed: int) -> np.ndarray:
    return _per_class(split, lambda X_fit, X_val, X_test, cls: NearestNeighbors(n_neighbors=1).fit(X_fit).kneighbors(X_test)[0][:, 0])


def _knn_pooled(split: SwapSplit, seed: int) -> np.ndarray:
    return NearestNeighbors(n_neighbors=1).fit(split.X_fit).kneighbors(split.X_test)[0][:, 0]


def _iforest(split: SwapSplit, seed: int) -> np.ndarray:
    return -IsolationForest(n_estimators=200, random_state=seed).fit(split.X_fit).score_samples(split.X_test)


def _flow_single_prior(split: SwapSplit, seed: int) -> np.ndarray:
    det = HGADDetector(**PLAIN_FLOW_PARAMS, random_state=seed)  # type: ignore[arg-type]
    det.fit(split.X_fit, np.full(len(split.X_fit), "all"), X_val=split.X_val, classes_val=np.full(len(split.X_val), "all"))
    return det.score(split.X_test, "all")


def _gauss(split: SwapSplit, seed: int) -> np.ndarray:
    det = GaussDetector(random_state=seed).fit(split.X_fit, split.c_fit, X_val=split.X_val, classes_val=split.c_val)
    return det.score(split.X_test, split.c_test)


METHODS = ("hgad", "hgad-agnostic", "gauss", "flow-per-class", "knn-per-class", "flow-single-prior", "knn-pooled", "iforest")
CLASS_AGNOSTIC = ("hgad-agnostic", "flow-single-prior", "knn-pooled", "iforest")


def run_methods(split: SwapSplit, seed: int, methods: list[str], log: Callable[[str], None] = print) -> dict[str, tuple[np.ndarray, float]]:
    """Scores of every method on ``split.X_test`` (claimed classes where the method uses them) and fit seconds."""
    simple = {"gauss": _gauss, "flow-per-class": _flow_per_class, "knn-per-class": _knn_per_class,
              "flow-single-prior": _flow_single_prior, "knn-pooled": _knn_pooled, "iforest": _iforest}
    out: dict[str, tuple[np.ndarray, float]] = {}
    for method in methods:
        started = time.perf_counter()
        if method == "hgad":
            det = HGADDetector(**HGAD_PARAMS, random_state=seed)  # type: ignore[arg-type]
            det.fit(split.X_fit, split.c_fit, X_val=split.X_val, classes_val=split.c_val)
            fit_s = time.perf_counter() - started
            out["hgad"] = (det.score(split.X_test, split.c_test).astype(np.float64), fit_s)
            out["hgad-agnostic"] = (det.score(split.X_test).astype(np.float64), fit_s)
        elif method in simple:
            out[method] = (np.asarray(simple[method](split, seed), dtype=np.float64), time.perf_counter() - started)
        if method in out:
            log(f"{split.name} seed {seed} {method:18s} {out[method][1]:6.1f}s")
    return out


def metrics(split: SwapSplit, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean over classes of AUROC / AP of each anomaly set against the class's test normals."""
    result: dict[str, dict[str, float]] = {}
    for subset in ("swap", "genuine", "all"):
        aurocs, aps = [], []
        for cls in split.classes:
            rows = split.c_test == cls
            kind = split.kind_test[rows]
            positive = kind != "normal" if subset == "all" else kind == subset
            keep = (kind == "normal") | positive
            if positive.sum() == 0:
                continue
            aurocs.append(roc_auc_score(positive[keep], scores[rows][keep]))
            aps.append(average_precision_score(positive[keep], scores[rows][keep]))
        result[subset] = {"auroc": float(np.mean(aurocs)), "ap": float(np.mean(aps)), "n_classes": len(aurocs)}
    return result


def write_markdown(rows: list[dict[str, object]], path: Path, header: list[str]) -> None:
    """results.md: per dataset, AUROC / AP (mean +- std over seeds) of every method on each anomaly set."""
    lines = ["# Class-swap benchmark", "", *header, ""]
    for dataset in dict.fromkeys(str(r["dataset"]) for r in rows):
        lines += [f"## {dataset}", "", "| method | class-aware | swap AUROC | swap AP | genuine AUROC | genuine AP | all AUROC | all AP | fit s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method in dict.fromkeys(str(r["method"]) for r in rows if r["dataset"] == dataset):
            cells = []
            for subset in ("swap", "genuine", "all"):
                for metric in ("auroc", "ap"):
                    v = [float(r[metric]) for r in rows if r["dataset"] == dataset and r["method"] == method and r["subset"] == subset]  # type: ignore[arg-type]
                    cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}")
            fit = np.mean([float(r["fit_s"]) for r in rows if r["dataset"] == dataset and r["method"] == method])  # type: ignore[arg-type]
            aware = "no" if method in CLASS_AGNOSTIC else "yes"
            lines.append(f"| {method} | {aware} | " + " | ".join(cells) + f" | {fit:.1f} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--datasets", default="mvtec,unsw_service")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "hgad-agnostic"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/class_swap"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for name in args.datasets.split(","):
        split = mvtec_swap_split() if name == "mvtec" else unsw_swap_split()
        print(f"{name}: {len(split.classes)} classes, {len(split.X_fit)} fit, {len(split.X_val)} val, {len(split.X_test)} test "
              f"({(split.kind_test == 'genuine').sum()} genuine, {(split.kind_test == 'swap').sum()} swapped), {split.X_fit.shape[1]} features")
        for seed in (int(s) for s in args.seeds.split(",")):
            for method, (scores, fit_s) in run_methods(split, seed, args.methods.split(",")).items():
                for subset, m in metrics(split, scores).items():
                    rows.append({"dataset": name, "seed": seed, "method": method, "subset": subset, "auroc": round(m["auroc"], 4),
                                 "ap": round(m["ap"], 4), "n_classes": m["n_classes"], "fit_s": round(fit_s, 1)})
            with (args.out / "results.csv").open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    header = [f"Seeds {args.seeds}; {N_SWAP} class-swapped test normals per class; 1 torch thread, `nice -n 19`, 2 shared CPU cores; "
              f"total {(time.perf_counter() - started) / 60:.1f} min. Protocol and methods: module docstring of "
              "`benchmarks/class_swap.py`. Mean over classes of per-class AUROC / AP against the class's test normals."]
    for name in args.datasets.split(","):
        split = mvtec_swap_split() if name == "mvtec" else unsw_swap_split()
        header.append(f"- {name}: {len(split.classes)} classes, {len(split.X_fit)} fit / {len(split.X_val)} validation normals, "
                      f"{len(split.X_test)} test rows ({(split.kind_test == 'genuine').sum()} genuine anomalies, "
                      f"{(split.kind_test == 'swap').sum()} swapped), {split.X_fit.shape[1]} features")
    write_markdown(rows, args.out / "results.md", header)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
