"""HGADDetector: one normalizing flow for many classes of normal events (spec ``hgad.md``).

When to use it: normal traffic comes from several *classes* (device types, tenants, services)
whose normal behaviour differs, events arrive with their claimed class (``Event.kind``), and one
model should serve all of them. A plain flow with one N(0, I) prior trained on pooled classes
tends to map everything, anomalies included, into the same dense region ("homogeneous mapping",
spec section 1), and it cannot tell that an event is normal for *another* class than the one it
claims. HGAD gives each class its own Gaussian centre in latent space, separates the centres
(mutual-information loss), makes each latent commit to one centre (entropy loss) and models
diversity within a class with a few extra centres per class. The anomaly score of an event is its
per-dimension class-conditional negative log-likelihood.

When not to: with a single class it is just a flow; with ~100 events per class in tens of
dimensions a per-class shrinkage Gaussian (``GaussDetector``) ranks anomalies as well or better
at a fraction of the cost (``benchmarks/results/unified``, ``benchmarks/results/class_swap``).
Cost: a fit is ``n_epochs`` passes of an ``n_blocks``-block flow (about a minute on one CPU
thread for 2,000 rows x 64 dims); scoring is one forward pass per batch.

Module layout, one job each: :mod:`.hgad_preprocess` (section 7 preprocessing and its tensors),
:mod:`.hgad_flow` (coupling blocks), :mod:`.hgad_losses` (the loss terms), :mod:`.hgad_network`
(the learnable state and centre initialisation), :mod:`.hgad_training` (schedule, stages, model
selection), :mod:`.hgad_calibration` (thresholds, health monitors), :mod:`.class_labels` (class
names), this file (the detector contract: parameters, fit, score, explain, save/load).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch

from ...schemas.errors import ConfigError, ModelIntegrityError
from ...schemas.manifest import ModelManifest, ScalerStats, ThresholdCalibration
from .base import BaseDetector, check_is_fitted, resolve_device, sha256_hex, tensors_from_bytes, tensors_to_bytes
from .class_labels import Labels, as_label, class_indices, encode_training_classes, holdout_mask
from .explanation import Explanation
from .hgad_calibration import class_thresholds, health_summary
from .hgad_losses import class_log_likelihoods
from .hgad_network import CHUNK_ROWS, MixtureFlow, data_main_centres, init_main_centres
from .hgad_preprocess import STATS_TENSORS, fit_preprocess, stats_from_tensors, stats_to_tensors, transform_preprocess
from .params import boolean, check_params, int_at_least, integer, one_of, optional, real_in
from .hgad_training import TrainConfig, train_mixture_flow

__all__ = ["FloatArray", "HGADDetector", "HGADExplanation"]

FloatArray = npt.NDArray[np.float32]

#: Values clipped to +-10 after robust scaling (spec section 7).
_CLIP = 10.0
_CENTRE_INITS = ("data", "onehot")


@dataclass(frozen=True)
class HGADExplanation:
    """Why an event was scored as it was; arrays have one entry per row.

    Attributes
    ----------
    score : float32 (n,)
        The anomaly score (higher = more anomalous), as :meth:`HGADDetector.score` returns it.
    claimed_class : list of str or None
        The class the row came with, None where it was missing or unknown to the model.
    best_class : list of str
        The class under which the row is most likely (argmax_y of the class-conditional ell_y).
    claimed_vs_best_gap : float32 (n,)
        ``max_y' ell_y' - ell_claimed`` >= 0: large when the event looks normal for some *other*
        class than the claimed one (spoofed device type, wrong tenant); NaN without a claimed class.
    threshold : float32 (n,)
        The calibrated threshold that applies to the row: its class's, or the class-agnostic one.
    """

    score: FloatArray
    claimed_class: list[str | None]
    best_class: list[str]
    claimed_vs_best_gap: FloatArray
    threshold: FloatArray

    @property
    def is_anomaly(self) -> npt.NDArray[np.bool_]:
        return self.score > self.threshold


class HGADDetector(BaseDetector):
    """Hierarchical Gaussian-mixture normalizing flow for unified multi-class anomaly detection.

    ``score`` returns **higher = more anomalous** (unlike scikit-learn's ``score_samples``): the
    per-dimension negative log-likelihood ``-ell_y(x)`` under the claimed class y's intra-class
    mixture (spec section 7 "Scoring a known class"), or ``min_y -ell_y(x)`` ("normal for at least
    one class") where the class is missing or unknown.

    Parameters
    ----------
    n_blocks : int
        Coupling blocks of the flow (12, the original's; issue 15 validation).
    n_intra_centres : int
        K, centres per class including the main one (10, the original's).
    centre_init : {"data", "onehot"}
        Where the main centres start: the class means of the rows pushed through the initial
        flow (``"data"``, issue 15's fix) or the original's one-hot pattern 5 apart (``"onehot"``).
    lambda1, lambda2 : float
        Weights of L_g and of L_mi. The original's lambda2 = 100 makes the flow a classifier
        (spec 8.5); the default was chosen on validation slices (``benchmarks/results/unified``).
    label_smoothing : float
        epsilon of the smoothed one-hot in L_mi (0.02).
    n_epochs : int
        Passes over the training rows.
    batch_size : int
        Rows per step; batches are class-stratified so each covers every class.
    lr : float
        Peak learning rate (Adam), warm-up during stage 1, cosine decay to lr * 1e-3.
    stage1_fraction : float
        Share of epochs in stage 1 (inter-class losses only), 0.08 = 2 of 25 meta-epochs.
    clamp : float
        alpha of the soft clamp alpha * tanh(s) in the coupling blocks.
    threshold_quantile : float
        Per-class thresholds are this quantile of held-out normal scores of the class.
    use_mi, use_entropy, use_intra : bool
        Switch off L_mi, L_e, or the intra-class centres (K = 1 and no L_intra) for ablations.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    random_state : int or None
        Seeds initialisation, rotations, batches and the hold-out split.

    Attributes
    ----------
    classes_ : list of str
        Training classes, in the order of the centres.
    n_features_in_ : int
    feature_names_in_ : list of str
    preprocess_ : PreprocessStats
        The fitted section-7 preprocessing.
    network_ : torch.nn.Module
        Flow, centres, deltas and mixture logits.
    thresholds_ : dict of str to float
        Per-class threshold: the ``threshold_quantile`` of the class's held-out normal scores.
    threshold_ : float
        Class-agnostic threshold (same quantile of the class-agnostic score of all held-out
        normals), used for rows without a known class.
    training_summary_ : dict
        Epochs, selected epoch, validation NLL, class accuracy of p(y|z), entropies of the mixture
        weights and dead intra-class centres (the monitors of spec section 8).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics import roc_auc_score
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (400, 6)), rng.normal(4, 1, (400, 6))].astype(np.float32)
    >>> c = np.repeat(["a", "b"], 400)
    >>> det = HGADDetector(n_blocks=4, n_intra_centres=2, n_epochs=20, batch_size=128, random_state=0).fit(X, c)
    >>> X_test = np.r_[rng.normal(0, 1, (50, 6)), rng.normal(4, 1, (50, 6))].astype(np.float32)
    >>> X_test[:5] += 6.0  # planted anomalies of class "a" (pushed past class "b")
    >>> y_test = np.r_[np.ones(5), np.zeros(95)]
    >>> round(roc_auc_score(y_test, det.score(X_test, np.repeat(["a", "b"], 50))), 2)
    1.0
    >>> swapped = det.score(X_test[50:55], "a")  # normal "b" events claiming to be "a"
    >>> bool(swapped.min() > det.thresholds_["a"])
    True

    References
    ----------
    ``shared/spec/hgad.md`` sections 2-5 (the method) and 7-8 (event vectors, failure modes).
    """

    detector_kind: ClassVar[str] = "hgad"

    def __init__(
        self,
        *,
        n_blocks: int = 12,
        n_intra_centres: int = 10,
        centre_init: str = "data",
        lambda1: float = 1.0,
        lambda2: float = 0.0,
        label_smoothing: float = 0.02,
        n_epochs: int = 100,
        batch_size: int = 1024,
        lr: float = 1e-3,
        stage1_fraction: float = 0.08,
        clamp: float = 1.9,
        threshold_quantile: float = 0.995,
        use_mi: bool = True,
        use_entropy: bool = True,
        use_intra: bool = True,
        device: str = "auto",
        random_state: int | None = None,
    ) -> None:
        self.n_blocks = n_blocks
        self.n_intra_centres = n_intra_centres
        self.centre_init = centre_init
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.label_smoothing = label_smoothing
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.stage1_fraction = stage1_fraction
        self.clamp = clamp
        self.threshold_quantile = threshold_quantile
        self.use_mi = use_mi
        self.use_entropy = use_entropy
        self.use_intra = use_intra
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        positive, unit_open = real_in(0, low_open=True), real_in(0, 1, high_open=True)
        check_params(self, {
            **dict.fromkeys(("n_blocks", "n_intra_centres", "n_epochs", "batch_size"), int_at_least(1)),
            "centre_init": one_of(*_CENTRE_INITS), "lambda1": real_in(0), "lambda2": real_in(0),
            "label_smoothing": unit_open, "lr": positive, "stage1_fraction": unit_open, "clamp": positive,
            "threshold_quantile": real_in(0, 1, low_open=True),
            **dict.fromkeys(("use_mi", "use_entropy", "use_intra"), boolean()), "random_state": optional(integer()),
        })
        try:
            resolve_device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"The 'device' parameter of {type(self).__name__} must be 'auto', 'cpu' or 'cuda[:i]'. Got {self.device!r} instead.") from exc

    @staticmethod
    def _check_matrix(X: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
        array = np.asarray(X, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"{what} must be a non-empty 2-D array (rows x features). Got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} contains NaN or infinite values; impute or drop them before fitting/scoring.")
        return array

    def _train_config(self) -> TrainConfig:
        return TrainConfig(lambda1=float(self.lambda1), lambda2=float(self.lambda2), label_smoothing=float(self.label_smoothing),
                           n_epochs=int(self.n_epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                           stage1_fraction=float(self.stage1_fraction), use_mi=self.use_mi, use_entropy=self.use_entropy,
                           use_intra=self.use_intra)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: npt.ArrayLike,
        classes: npt.ArrayLike,
        *,
        X_val: npt.ArrayLike | None = None,
        classes_val: npt.ArrayLike | None = None,
        feature_names: list[str] | None = None,
    ) -> Self:
        """Fit on normal-only rows ``X`` (n, d) with their class labels ``classes`` (n,).

        ``X_val``/``classes_val`` (held-out normals) drive model selection (the epoch with the
        lowest class-balanced validation NLL) and the per-class thresholds. Without them, 15 % of
        each class's rows (classes with >= 20 rows) are held out.
        """
        self._validate_params()
        started = time.perf_counter()
        X_all = self._check_matrix(X, "X")
        class_list, y_all = encode_training_classes(classes, X_all.shape[0])
        if feature_names is not None and len(feature_names) != X_all.shape[1]:
            raise ValueError(f"feature_names has {len(feature_names)} names for {X_all.shape[1]} features.")
        seed = int(self.random_state) if self.random_state is not None else int(np.random.default_rng().integers(2**31 - 1))
        rng = np.random.default_rng(seed)
        X_tr, y_tr, X_va, y_va = self._split(X_all, y_all, class_list, X_val, classes_val, rng)

        self.classes_ = class_list
        self.n_features_in_ = X_all.shape[1]
        self.feature_names_in_ = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(X_all.shape[1])]
        self.preprocess_ = fit_preprocess(X_tr, clip=_CLIP)
        device = resolve_device(self.device)
        dim = self.preprocess_.n_features_out
        n_centres = self.n_intra_centres if self.use_intra else 1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = MixtureFlow(dim, len(class_list), n_centres, n_blocks=self.n_blocks, clamp=self.clamp, seed=seed).to(device)
            if self.centre_init == "data":
                x_init = torch.from_numpy(transform_preprocess(X_tr, self.preprocess_)).to(device)
                network.centres.data.copy_(data_main_centres(network, x_init, torch.from_numpy(y_tr).to(device)))
            else:
                network.centres.data.copy_(init_main_centres(len(class_list), dim, torch.Generator().manual_seed(seed)).to(device))
            summary = train_mixture_flow(network, self._train_config(), self.preprocess_, (X_tr, y_tr, X_va, y_va),
                                         rng=rng, device=device, seed=seed)
        self.network_ = network.eval()
        ll_va = self._log_likelihoods(X_va) if len(X_va) else np.zeros((0, len(class_list)))
        self.thresholds_, self.threshold_, on_train = class_thresholds(
            ll_va, y_va, self._log_likelihoods(X_tr), y_tr, class_list, self.threshold_quantile)
        self._n_calibration = int(len(ll_va))
        x_tr = torch.from_numpy(transform_preprocess(X_tr, self.preprocess_)).to(device)
        x_va = torch.from_numpy(transform_preprocess(X_va, self.preprocess_)).to(device) if len(X_va) else None
        summary.update(health_summary(network, x_tr, y_tr, x_va, y_va, class_list))
        summary.update({"n_features_model": dim, "calibrated_on_train": on_train,
                        "fit_seconds": round(time.perf_counter() - started, 3), "seed": seed})
        self.training_summary_ = summary
        return self

    def _split(self, X_all: npt.NDArray[np.float64], y_all: npt.NDArray[np.int64], class_list: list[str],
               X_val: npt.ArrayLike | None, classes_val: npt.ArrayLike | None, rng: np.random.Generator,
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Training and validation rows. Without ``X_val`` a stratified 15 % of each class is held out.

        resolution: rare classes are not merged into "other" (spec section 7): the API has no knob
        for it and merging would change the caller's class names; callers merge before fit if they want.
        """
        if X_val is None:
            train = holdout_mask(y_all, rng)
            return X_all[train], y_all[train], X_all[~train], y_all[~train]
        if classes_val is None:
            raise ValueError("X_val needs classes_val (the class of each validation row).")
        X_va = self._check_matrix(X_val, "X_val")
        val_labels = [as_label(v) for v in np.asarray(classes_val, dtype=object).ravel()]
        if len(val_labels) != X_va.shape[0]:
            raise ValueError("classes_val must have one label per row of X_val.")
        index = {c: i for i, c in enumerate(class_list)}
        keep = np.array([v in index for v in val_labels], dtype=bool)
        # resolution: validation rows of classes absent from training cannot calibrate anything; drop them.
        y_va = np.array([index[v] for v, k in zip(val_labels, keep) if k], dtype=np.int64)  # type: ignore[index]
        return X_all, y_all, X_va[keep], y_va

    # ------------------------------------------------------------------ scoring
    def _log_likelihoods(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """ell_y(x) for every row and every training class (n, Y), one forward pass per chunk."""
        check_is_fitted(self, "network_")
        X = self._check_matrix(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} was fitted with {self.n_features_in_}.")
        network = self.network_
        device = network.centres.device
        x = torch.from_numpy(transform_preprocess(X, self.preprocess_))
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), CHUNK_ROWS):
                z, log_det = network.flow(x[i : i + CHUNK_ROWS].to(device))
                out.append(class_log_likelihoods(z, log_det, network.centres, network.deltas, network.logits_omega).double().cpu())
        return torch.cat(out).numpy()

    def _claimed_and_agnostic(self, X: npt.ArrayLike, classes: Labels) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], FloatArray]:
        """(ell (n, Y), class index or -1, score): the claimed class's NLL, min_y NLL where unknown."""
        ll = self._log_likelihoods(X)
        idx = class_indices(classes, ll.shape[0], self.classes_)
        claimed = -ll[np.arange(ll.shape[0]), np.maximum(idx, 0)]
        return ll, idx, np.where(idx >= 0, claimed, -ll.max(axis=1)).astype(np.float32)

    def score(self, X: npt.ArrayLike, classes: Labels = None) -> FloatArray:
        """Anomaly scores, **higher = more anomalous** (n,) float32.

        Rows with a known class get ``-ell_class(x)``; rows whose class is None, NaN or unseen in
        training get the class-agnostic ``min_y -ell_y(x)`` (spec section 7, recommended default).
        ``classes`` may be one label per row, a single label for all rows, or None.

        resolution: the spec's default score is A_ll = 1 - exp(ell - M_y), a per-class monotone
        transform of -ell_y; per-class rankings (and per-class AUROC) are identical, so we return the
        raw per-dimension NLL, which is also comparable across classes for the agnostic minimum, and
        put class differences into the per-class thresholds instead. The entropy term is not used at
        scoring (spec 8.6: the product can hide gross anomalies).
        """
        return self._claimed_and_agnostic(X, classes)[2]

    def score_rows(self, X: npt.ArrayLike, classes: Labels = None) -> FloatArray:
        """The scorer's entry point: :meth:`score` under each row's claimed class."""
        return self.score(X, classes)

    def predict_class(self, X: npt.ArrayLike) -> npt.NDArray[np.object_]:
        """The class under which each row is most likely (argmax_y ell_y); the retrainer's class source."""
        best = self._log_likelihoods(X).argmax(axis=1)
        return np.array(self.classes_, dtype=object)[best]

    def _row_thresholds(self, idx: npt.NDArray[np.int64]) -> FloatArray:
        """The calibrated threshold of each row's class, the class-agnostic one where idx is -1."""
        per_class = np.array([self.thresholds_.get(c, self.threshold_) for c in self.classes_], dtype=np.float64)
        return np.where(idx >= 0, per_class[np.maximum(idx, 0)], self.threshold_).astype(np.float32)

    def explain(self, X: npt.ArrayLike, classes: Labels = None) -> HGADExplanation:
        """Score plus best class, claimed-vs-best gap and the threshold that applies to each row."""
        ll, idx, score = self._claimed_and_agnostic(X, classes)
        n = ll.shape[0]
        claimed_ll = ll[np.arange(n), np.maximum(idx, 0)]
        # resolution: without a claimed class the gap is undefined; NaN rather than 0 so it is never
        # mistaken for "claimed class is the best one".
        gap = np.where(idx >= 0, ll.max(axis=1) - claimed_ll, np.nan).astype(np.float32)
        return HGADExplanation(
            score=score, claimed_class=[self.classes_[i] if i >= 0 else None for i in idx],
            best_class=[self.classes_[i] for i in ll.argmax(axis=1)], claimed_vs_best_gap=gap,
            threshold=self._row_thresholds(idx),
        )

    def explain_rows(self, X: npt.ArrayLike, classes: Labels = None, *, n_top: int = 3) -> Explanation:
        """The alert view: ``class_nll`` (the score) and ``claimed_vs_best_gap`` (0 without a claimed class).

        A flow has no per-feature attribution, so ``top_features`` stays None (``n_top`` is unused).
        """
        if len(np.asarray(X)) == 0:  # no forward pass for a batch without alerts
            empty = np.empty(0, dtype=np.float32)
            return Explanation(score=empty, score_name="class_nll", components={"claimed_vs_best_gap": empty})
        exp = self.explain(X, classes)
        return Explanation(score=exp.score, score_name="class_nll",
                           components={"claimed_vs_best_gap": np.nan_to_num(exp.claimed_vs_best_gap)})

    # ------------------------------------------------------------------ persistence
    def save(self) -> tuple[bytes, ModelManifest]:
        """Safetensors bytes and a manifest with per-class thresholds and the class list."""
        check_is_fitted(self, "network_")
        tensors = {f"net.{k}": v for k, v in self.network_.state_dict().items()}
        blob = tensors_to_bytes({**tensors, **stats_to_tensors(self.preprocess_)})
        stats = self.preprocess_
        manifest = ModelManifest(
            detector="hgad",
            params=self.get_params(),
            feature_names=list(self.feature_names_in_),
            scaler=ScalerStats(
                kind="robust", offset=[float(v) for v in stats.offset], scale=[float(v) for v in stats.scale],
                log1p_mask=[bool(v) for v in stats.log1p_mask], clip=stats.clip,
            ),
            threshold=self.threshold_,
            calibration=ThresholdCalibration(
                method="normal_quantile", target=self.threshold_quantile, n_samples=self._n_calibration,
                per_class=dict(self.thresholds_),
            ),
            training_summary=dict(self.training_summary_),
            weights_sha256=sha256_hex(blob),
        )
        return blob, manifest

    @classmethod
    def load(cls, weights: bytes, manifest: ModelManifest) -> Self:
        """Rebuild a fitted detector from :meth:`save`'s output (sha256 and shapes checked).

        Thresholds come from the manifest, so a retrain that recalibrated them is served as recorded.
        """
        if manifest.detector != "hgad":
            raise ModelIntegrityError(f"manifest is for detector {manifest.detector!r}, not 'hgad'; load it with its own class.")
        classes = manifest.training_summary.get("classes")
        if not classes:
            raise ModelIntegrityError("manifest.training_summary lacks 'classes'; it was not written by HGADDetector.save().")
        tensors = tensors_from_bytes(weights, manifest, expected=set(STATS_TENSORS) | {"net.centres", "net.logits_omega"})
        detector = cls(**manifest.params)
        clip = manifest.scaler.clip if manifest.scaler is not None and manifest.scaler.clip is not None else _CLIP
        stats = stats_from_tensors(tensors, clip=clip)
        if len(stats.keep) != len(manifest.feature_names):
            raise ModelIntegrityError(f"weights expect {len(stats.keep)} features, the manifest names {len(manifest.feature_names)}.")
        n_classes, dim = tensors["net.centres"].shape
        n_centres = tensors["net.logits_omega"].shape[1]
        if n_classes != len(classes):
            raise ModelIntegrityError(f"weights hold {n_classes} class centres, the manifest lists {len(classes)} classes.")
        with torch.random.fork_rng(devices=[]):  # the throwaway init must not consume the caller's RNG
            network = MixtureFlow(dim, n_classes, n_centres, n_blocks=detector.n_blocks, clamp=detector.clamp, seed=0)
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelIntegrityError(f"weights do not fit an HGAD network with n_blocks={detector.n_blocks}: {exc}") from exc
        detector.preprocess_ = stats
        detector.network_ = network.to(resolve_device(detector.device)).eval()
        detector.classes_ = [str(c) for c in classes]
        detector.n_features_in_ = len(stats.keep)
        detector.feature_names_in_ = list(manifest.feature_names)
        detector.thresholds_ = dict(manifest.calibration.per_class)
        detector.threshold_ = float(manifest.threshold) if manifest.threshold is not None else math.inf
        detector.training_summary_ = dict(manifest.training_summary)
        detector._n_calibration = manifest.calibration.n_samples
        return detector
