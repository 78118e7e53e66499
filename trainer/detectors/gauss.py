"""GaussDetector: one shrinkage Gaussian per class, the honest baseline for class-aware scoring.

When to use it: events come with a class (``Event.kind``) and each class has from a handful to a
few thousand normal rows. A Gaussian with a Ledoit-Wolf shrunk covariance needs no training loop,
estimates 64-d densities from ~100 rows (a flow cannot), and ranks both defects and class-swapped
events (normal for another class than the one claimed) well whenever each class is roughly
unimodal after preprocessing (``benchmarks/results/unified``, ``benchmarks/results/class_swap``).
It is also the fallback for classes too small for HGAD.

When not to: a class whose normal rows form several separate modes, or lie on a curved manifold,
is covered by one ellipsoid that also covers the gaps; a flow (HGAD) can follow such shapes when
it has the rows to learn them. Cost: fit O(n d^2 + Y d^3); scoring one triangular solve per class
per batch.

Scores are per-dimension negative log-likelihoods, as HGAD's, so class-agnostic scores (the
minimum over classes) and thresholds mean the same thing in both detectors.
"""
from __future__ import annotations

import math
import time
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch
from sklearn.covariance import ledoit_wolf

from ...schemas.errors import ModelIntegrityError
from ...schemas.manifest import ModelManifest, ScalerStats, ThresholdCalibration
from .base import BaseDetector, check_is_fitted, sha256_hex, tensors_from_bytes, tensors_to_bytes
from .class_labels import Labels, as_label, class_indices, encode_training_classes, holdout_mask
from .explanation import Explanation
from .hgad_calibration import class_thresholds
from .hgad_preprocess import STATS_TENSORS, fit_preprocess, stats_from_tensors, stats_to_tensors, transform_preprocess
from .params import check_params, integer, optional, real_in

__all__ = ["FloatArray", "GaussDetector"]

FloatArray = npt.NDArray[np.float32]
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: Values clipped to +-10 after robust scaling, as for HGAD.
_CLIP = 10.0
#: Classes with fewer rows cannot estimate a covariance at all; they borrow the pooled one.
_MIN_CLASS_ROWS = 2


class GaussDetector(BaseDetector):
    """One Gaussian per class with a Ledoit-Wolf (or fixed) shrinkage covariance.

    ``score`` returns **higher = more anomalous**: the per-dimension negative log-likelihood under
    the claimed class's Gaussian, or the minimum over classes where the class is missing or unseen.

    Parameters
    ----------
    shrinkage : float or None
        None: the Ledoit-Wolf shrinkage estimated per class; a float in [0, 1]: that weight on the
        scaled identity, for every class.
    reg_covar : float
        Added to every covariance diagonal (in robust-scaled units) so that a feature constant within
        one class does not give an infinite density.
    threshold_quantile : float
        Per-class thresholds are this quantile of held-out normal scores of the class.
    random_state : int or None
        Seeds the held-out split used when no validation rows are given.

    Attributes
    ----------
    classes_ : list of str
    n_features_in_ : int
    feature_names_in_ : list of str
    preprocess_ : PreprocessStats
        log1p of heavy tails, robust scaling, clipping (shared with HGAD; no padding used).
    means_ : float64 (Y, d')
    cholesky_ : float64 (Y, d', d')
        Lower Cholesky factors of the class covariances.
    thresholds_ : dict of str to float
    threshold_ : float
        Class-agnostic threshold, for rows of unknown classes.
    training_summary_ : dict

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics import roc_auc_score
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (300, 4)), rng.normal(3, 1, (300, 4))]
    >>> det = GaussDetector(random_state=0).fit(X, np.repeat(["a", "b"], 300))
    >>> X_test = np.r_[rng.normal(0, 1, (50, 4)), rng.normal(3, 1, (50, 4))]
    >>> claimed = np.repeat(["a", "b"], 50)
    >>> claimed[:5] = "b"  # five "a" events claiming to be "b"
    >>> y = np.r_[np.ones(5), np.zeros(95)]
    >>> round(roc_auc_score(y, det.score(X_test, claimed)), 2), round(roc_auc_score(y, det.score(X_test)), 2)
    (1.0, 0.5...)
    """

    detector_kind: ClassVar[str] = "gauss"

    def __init__(self, *, shrinkage: float | None = None, reg_covar: float = 1e-6, threshold_quantile: float = 0.995,
                 random_state: int | None = None) -> None:
        self.shrinkage = shrinkage
        self.reg_covar = reg_covar
        self.threshold_quantile = threshold_quantile
        self.random_state = random_state

    def _validate_params(self) -> None:
        check_params(self, {"shrinkage": optional(real_in(0, 1)), "reg_covar": real_in(0, low_open=True),
                            "threshold_quantile": real_in(0, 1, low_open=True), "random_state": optional(integer())})

    @staticmethod
    def _check_matrix(X: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
        array = np.asarray(X, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"{what} must be a non-empty 2-D array (rows x features). Got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} contains NaN or infinite values; impute or drop them before fitting/scoring.")
        return array

    def _transform(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # The shared preprocessing pads tiny inputs for flows; a Gaussian needs no padding.
        Z = transform_preprocess(X, self.preprocess_).astype(np.float64)
        return Z[:, : Z.shape[1] - self.preprocess_.n_pad]

    # ------------------------------------------------------------------ fitting
    def fit(self, X: npt.ArrayLike, classes: npt.ArrayLike, *, X_val: npt.ArrayLike | None = None,
            classes_val: npt.ArrayLike | None = None, feature_names: list[str] | None = None) -> Self:
        """Fit one Gaussian per class on normal rows; calibrate per-class thresholds on held-out normals.

        Without ``X_val`` a stratified 15 % of each class (classes with >= 20 rows) is held out for
        the thresholds and the Gaussians are fitted on the rest, as HGAD does.
        """
        self._validate_params()
        started = time.perf_counter()
        X_all = self._check_matrix(X, "X")
        class_list, y_all = encode_training_classes(classes, X_all.shape[0])
        if feature_names is not None and len(feature_names) != X_all.shape[1]:
            raise ValueError(f"feature_names has {len(feature_names)} names for {X_all.shape[1]} features.")
        rng = np.random.default_rng(self.random_state)
        if X_val is None:
            train = holdout_mask(y_all, rng)
            X_tr, y_tr, X_va, y_va = X_all[train], y_all[train], X_all[~train], y_all[~train]
        else:
            if classes_val is None:
                raise ValueError("X_val needs classes_val (the class of each validation row).")
            X_va = self._check_matrix(X_val, "X_val")
            index = {c: i for i, c in enumerate(class_list)}
            labels = [as_label(v) for v in np.asarray(classes_val, dtype=object).ravel()]
            if len(labels) != len(X_va):
                raise ValueError("classes_val must have one label per row of X_val.")
            keep = np.array([v in index for v in labels], dtype=bool)
            X_tr, y_tr, X_va = X_all, y_all, X_va[keep]
            y_va = np.array([index[v] for v, k in zip(labels, keep) if k], dtype=np.int64)  # type: ignore[index]

        self.classes_ = class_list
        self.n_features_in_ = X_all.shape[1]
        self.feature_names_in_ = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(X_all.shape[1])]
        self.preprocess_ = fit_preprocess(X_tr, clip=_CLIP)
        Z = self._transform(X_tr)
        dim = Z.shape[1]
        pooled = self._covariance(Z - Z.mean(0)) if len(Z) >= _MIN_CLASS_ROWS else np.eye(dim)
        means, chols, shrinkages = [], [], []
        for c in range(len(class_list)):
            Zc = Z[y_tr == c]
            mean = Zc.mean(0) if len(Zc) else Z.mean(0)
            cov, shrink = (self._covariance(Zc - mean), self._last_shrinkage) if len(Zc) >= _MIN_CLASS_ROWS else (pooled, float("nan"))
            means.append(mean)
            chols.append(np.linalg.cholesky(cov + self.reg_covar * np.eye(dim)))
            shrinkages.append(round(float(shrink), 4))
        self.means_ = np.stack(means)
        self.cholesky_ = np.stack(chols)
        ll_va = self._log_likelihoods(X_va) if len(X_va) else np.zeros((0, len(class_list)))
        self.thresholds_, self.threshold_, on_train = class_thresholds(
            ll_va, y_va, self._log_likelihoods(X_tr), y_tr, class_list, self.threshold_quantile)
        self._n_calibration = int(len(ll_va))
        self.training_summary_ = {
            "classes": list(class_list), "class_counts": {n: int((y_tr == c).sum()) for c, n in enumerate(class_list)},
            "shrinkage": shrinkages, "n_features_model": dim, "calibrated_on_train": on_train,
            "n_train": int(len(y_tr)), "n_val": int(len(y_va)), "fit_seconds": round(time.perf_counter() - started, 3),
        }
        return self

    def _covariance(self, centred: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Shrunk covariance of centred rows: (1 - a) S + a (tr S / d) I, a Ledoit-Wolf's or fixed."""
        if self.shrinkage is None:
            cov, shrink = ledoit_wolf(centred, assume_centered=True)
        else:
            emp = centred.T @ centred / len(centred)
            shrink = float(self.shrinkage)
            cov = (1 - shrink) * emp + shrink * np.trace(emp) / emp.shape[0] * np.eye(emp.shape[0])
        self._last_shrinkage = float(shrink)
        return cov

    # ------------------------------------------------------------------ scoring
    def _whitened(self, X: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(residuals r = z - mu_y (n, Y, d), whitened w = L_y^-1 r (n, Y, d)) for every class."""
        check_is_fitted(self, "means_")
        X = self._check_matrix(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} was fitted with {self.n_features_in_}.")
        Z = self._transform(X)
        r = Z[:, None, :] - self.means_[None, :, :]
        L = torch.from_numpy(self.cholesky_)  # (Y, d, d)
        w = torch.linalg.solve_triangular(L, torch.from_numpy(r).permute(1, 2, 0), upper=False)  # (Y, d, n)
        return r, w.permute(2, 0, 1).numpy()

    def _log_likelihoods(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """ell_y(x) per row and class (n, Y): per-dimension Gaussian log-density."""
        _, w = self._whitened(X)
        dim = self.means_.shape[1]
        log_det = 2.0 * np.log(np.diagonal(self.cholesky_, axis1=1, axis2=2)).sum(1)  # (Y,)
        return -0.5 * ((w**2).sum(-1) + log_det[None, :]) / dim - _HALF_LOG_2PI

    def score(self, X: npt.ArrayLike, classes: Labels = None) -> FloatArray:
        """Anomaly scores, **higher = more anomalous**: -ell of the claimed class, min over classes if unknown."""
        ll = self._log_likelihoods(X)
        idx = class_indices(classes, ll.shape[0], self.classes_)
        claimed = -ll[np.arange(ll.shape[0]), np.maximum(idx, 0)]
        return np.where(idx >= 0, claimed, -ll.max(axis=1)).astype(np.float32)

    def score_rows(self, X: npt.ArrayLike, classes: Labels = None) -> FloatArray:
        """The scorer's entry point: :meth:`score` under each row's claimed class."""
        return self.score(X, classes)

    def predict_class(self, X: npt.ArrayLike) -> npt.NDArray[np.object_]:
        """The class under which each row is most likely."""
        return np.array(self.classes_, dtype=object)[self._log_likelihoods(X).argmax(axis=1)]

    def explain_rows(self, X: npt.ArrayLike, classes: Labels = None, *, n_top: int = 3) -> Explanation:
        """``class_nll``, ``claimed_vs_best_gap`` and the features that add most to the Mahalanobis term.

        The squared Mahalanobis distance r' P r splits exactly into per-feature terms r_j (P r)_j
        (they can be negative when correlated features offset each other); divided by 2d they sum
        to the row's NLL above its class's minimum. Rows without a known class are explained under
        their best class.
        """
        k = min(n_top, self.means_.shape[1])
        if len(np.asarray(X)) == 0:
            empty = np.empty(0, dtype=np.float32)
            return Explanation(score=empty, score_name="class_nll", components={"claimed_vs_best_gap": empty},
                               top_features=np.empty((0, k), np.int64), top_contributions=np.empty((0, k), np.float32))
        r, w = self._whitened(X)
        dim = self.means_.shape[1]
        log_det = 2.0 * np.log(np.diagonal(self.cholesky_, axis1=1, axis2=2)).sum(1)
        ll = -0.5 * ((w**2).sum(-1) + log_det[None, :]) / dim - _HALF_LOG_2PI
        n = len(ll)
        idx = class_indices(classes, n, self.classes_)
        used = np.where(idx >= 0, idx, ll.argmax(axis=1))
        score = (-ll[np.arange(n), used]).astype(np.float32)
        gap = np.where(idx >= 0, ll.max(axis=1) - ll[np.arange(n), np.maximum(idx, 0)], 0.0).astype(np.float32)
        # P r = L^-T w for the row's class: one triangular solve per used class.
        contrib = np.empty((n, dim))
        for c in np.unique(used):
            rows = used == c
            Pr = np.linalg.solve(self.cholesky_[c].T, w[rows, c, :].T).T
            contrib[rows] = r[rows, c, :] * Pr / (2.0 * dim)
        top = np.argsort(-contrib, axis=1)[:, :k]
        kept = np.flatnonzero(self.preprocess_.keep)  # model dims -> input feature indices
        return Explanation(score=score, score_name="class_nll", components={"claimed_vs_best_gap": gap},
                           top_features=kept[top].astype(np.int64),
                           top_contributions=np.take_along_axis(contrib, top, axis=1).astype(np.float32))

    # ------------------------------------------------------------------ persistence
    def save(self) -> tuple[bytes, ModelManifest]:
        """Safetensors bytes (means, Cholesky factors, preprocessing) and a manifest with per-class thresholds."""
        check_is_fitted(self, "means_")
        tensors = {"gauss.means": torch.from_numpy(self.means_), "gauss.cholesky": torch.from_numpy(self.cholesky_),
                   **stats_to_tensors(self.preprocess_)}
        blob = tensors_to_bytes(tensors)
        stats = self.preprocess_
        manifest = ModelManifest(
            detector="gauss", params=self.get_params(), feature_names=list(self.feature_names_in_),
            scaler=ScalerStats(kind="robust", offset=[float(v) for v in stats.offset], scale=[float(v) for v in stats.scale],
                               log1p_mask=[bool(v) for v in stats.log1p_mask], clip=stats.clip),
            threshold=self.threshold_,
            calibration=ThresholdCalibration(method="normal_quantile", target=self.threshold_quantile,
                                             n_samples=self._n_calibration, per_class=dict(self.thresholds_)),
            training_summary=dict(self.training_summary_), weights_sha256=sha256_hex(blob),
        )
        return blob, manifest

    @classmethod
    def load(cls, weights: bytes, manifest: ModelManifest) -> Self:
        """Rebuild a fitted detector from :meth:`save`'s output (sha256 and shapes checked)."""
        if manifest.detector != "gauss":
            raise ModelIntegrityError(f"manifest is for detector {manifest.detector!r}, not 'gauss'; load it with its own class.")
        classes = manifest.training_summary.get("classes")
        if not classes:
            raise ModelIntegrityError("manifest.training_summary lacks 'classes'; it was not written by GaussDetector.save().")
        tensors = tensors_from_bytes(weights, manifest, expected=set(STATS_TENSORS) | {"gauss.means", "gauss.cholesky"})
        detector = cls(**manifest.params)
        clip = manifest.scaler.clip if manifest.scaler is not None and manifest.scaler.clip is not None else _CLIP
        stats = stats_from_tensors(tensors, clip=clip)
        means, chol = tensors["gauss.means"].numpy(), tensors["gauss.cholesky"].numpy()
        if len(stats.keep) != len(manifest.feature_names):
            raise ModelIntegrityError(f"weights expect {len(stats.keep)} features, the manifest names {len(manifest.feature_names)}.")
        if means.shape[0] != len(classes) or chol.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ModelIntegrityError(f"weights hold means {means.shape} and factors {chol.shape} for {len(classes)} classes.")
        detector.preprocess_ = stats
        detector.means_, detector.cholesky_ = means.astype(np.float64), chol.astype(np.float64)
        detector.classes_ = [str(c) for c in classes]
        detector.n_features_in_ = len(stats.keep)
        detector.feature_names_in_ = list(manifest.feature_names)
        detector.thresholds_ = dict(manifest.calibration.per_class)
        detector.threshold_ = float(manifest.threshold) if manifest.threshold is not None else math.inf
        detector.training_summary_ = dict(manifest.training_summary)
        detector._n_calibration = manifest.calibration.n_samples
        return detector
