"""The evaluation protocol of the MNP reference code (spec ``mnp.md`` section 2), as data splits.

Per class, a 60 / 35 / 5 train / test / validation split with ``random_state=2024`` (the same for
every seed), constant features dropped over the whole dataset, MinMax fitted on the training part
(which contains the unlabelled anomalies), and the first ``ceil(labelled_ratio * n_train_anomalies)``
training anomalies, in the order ``train_test_split`` returns them, labelled.

Resolution (not in the spec): the 40 % remainder is split as ``train_test_split(rest,
test_size=0.125)`` so that validation is 5 % of the total (0.125 * 40 %) and test 35 %.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

__all__ = ["DatasetSplit", "load_npz", "resample_contamination", "split_reference"]

SPLIT_SEED = 2024


@dataclass(frozen=True)
class DatasetSplit:
    """One dataset under the reference protocol; ``semi_y`` is 1 for labelled anomalies, else 0."""

    name: str
    X_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    semi_y: npt.NDArray[np.int64]
    X_val: npt.NDArray[np.float32]
    y_val: npt.NDArray[np.int64]
    X_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    feature_names: list[str]

    @property
    def X_labelled(self) -> npt.NDArray[np.float32]:
        return self.X_train[self.semi_y == 1]

    @property
    def X_unlabelled(self) -> npt.NDArray[np.float32]:
        return self.X_train[self.semi_y == 0]


def load_npz(path: Path | str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], list[str]]:
    """X, y and feature names of a dataset file (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        X = np.asarray(data["X"], dtype=np.float64)
        y = np.asarray(data["y"]).astype(np.int64).ravel()
        names = [str(n) for n in data["feature_names"]] if "feature_names" in data else [f"f{i}" for i in range(X.shape[1])]
    return X, y, names


def _forward_fill(X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    X = np.where(np.isfinite(X), X, np.nan)
    if not np.isnan(X).any():
        return X
    mask = np.isnan(X)
    idx = np.where(~mask, np.arange(X.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = X[idx, np.arange(X.shape[1])]
    return np.nan_to_num(filled, nan=0.0)  # leading NaNs have nothing to fill from


def split_reference(path: Path | str, labelled_ratio: float = 0.01) -> DatasetSplit:
    """Split a dataset file as the reference code does (deterministic: the seed only drives models)."""
    X, y, names = load_npz(path)
    X = _forward_fill(X)
    keep = X.std(axis=0) > 0
    X = X[:, keep]
    names = [n for n, k in zip(names, keep) if k]
    parts: dict[str, list[npt.NDArray[np.float64]]] = {"train": [], "test": [], "val": []}
    labels: dict[str, list[npt.NDArray[np.int64]]] = {"train": [], "test": [], "val": []}
    for cls in (0, 1):
        Xc = X[y == cls]
        X_tr, X_rest = train_test_split(Xc, test_size=0.4, random_state=SPLIT_SEED)
        X_te, X_va = train_test_split(X_rest, test_size=0.125, random_state=SPLIT_SEED)
        for key, part in (("train", X_tr), ("test", X_te), ("val", X_va)):
            parts[key].append(part)
            labels[key].append(np.full(len(part), cls, dtype=np.int64))
    stacked = {k: np.concatenate(v) for k, v in parts.items()}
    ys = {k: np.concatenate(v) for k, v in labels.items()}
    lo = stacked["train"].min(axis=0)
    span = stacked["train"].max(axis=0) - lo
    span[span == 0] = 1.0
    scaled = {k: ((v - lo) / span).astype(np.float32) for k, v in stacked.items()}
    n_anom = int(ys["train"].sum())
    n_labelled = max(1, math.ceil(labelled_ratio * n_anom))
    semi_y = np.zeros(len(ys["train"]), dtype=np.int64)
    semi_y[np.flatnonzero(ys["train"] == 1)[:n_labelled]] = 1
    return DatasetSplit(
        name=Path(path).stem, X_train=scaled["train"], y_train=ys["train"], semi_y=semi_y,
        X_val=scaled["val"], y_val=ys["val"], X_test=scaled["test"], y_test=ys["test"], feature_names=names,
    )


def resample_contamination(split: DatasetSplit, contamination: float, random_state: int) -> DatasetSplit:
    """Resample the unlabelled training part so that ``contamination`` of it are anomalies.

    Normals are all kept; unlabelled anomalies are subsampled (or, when too few exist, drawn with
    replacement and jittered by 1 % of the feature range, so duplicates do not become atoms).
    Labelled anomalies and test/val parts are unchanged.
    """
    rng = np.random.default_rng(random_state)
    unl = split.semi_y == 0
    normals = split.X_train[unl & (split.y_train == 0)]
    anomalies = split.X_train[unl & (split.y_train == 1)]
    n_target = int(round(contamination * len(normals) / max(1e-9, 1 - contamination)))
    if n_target <= len(anomalies):
        chosen = anomalies[rng.choice(len(anomalies), n_target, replace=False)]
    else:
        chosen = anomalies[rng.choice(len(anomalies), n_target, replace=True)]
        chosen = chosen + rng.normal(0, 0.01, chosen.shape).astype(np.float32)
    labelled = split.X_train[split.semi_y == 1]
    X_train = np.concatenate([normals, chosen, labelled]).astype(np.float32)
    y_train = np.concatenate([np.zeros(len(normals)), np.ones(len(chosen)), np.ones(len(labelled))]).astype(np.int64)
    semi_y = np.concatenate([np.zeros(len(normals) + len(chosen)), np.ones(len(labelled))]).astype(np.int64)
    return DatasetSplit(
        name=split.name, X_train=X_train, y_train=y_train, semi_y=semi_y, X_val=split.X_val, y_val=split.y_val,
        X_test=split.X_test, y_test=split.y_test, feature_names=split.feature_names,
    )
