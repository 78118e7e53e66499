"""HGADDetector: one normalizing flow for many classes of normal events (spec ``hgad.md``).

When to use it: normal traffic comes from several *classes* (device types, tenants, product
categories) whose normal behaviour differs, and one model should serve all of them. A plain flow
with one N(0, I) prior trained on pooled classes tends to map everything, anomalies included, into
the same dense region ("homogeneous mapping", spec section 1). HGAD gives each class its own
Gaussian centre in latent space, pushes the centres apart (mutual-information loss), makes each
latent commit to one centre (entropy loss) and models diversity within a class with a few extra
centres per class. The anomaly score of an event is its per-dimension class-conditional negative
log-likelihood.

When not to: with a single class it is just a flow (use the cheaper MNP detector or a Gaussian);
with a few hundred events per class a flow can overfit, and a per-class Gaussian may rank
anomalies as well at a fraction of the cost (see ``benchmarks/results/unified``). Cost: a fit is
``n_epochs`` passes of an ``n_blocks``-block flow (seconds to minutes on CPU for D <= 64);
scoring is one forward pass per batch.

Module layout: :mod:`.hgad_preprocess` (section 7 preprocessing), :mod:`.hgad_flow` (coupling
blocks), :mod:`.hgad_losses` (the loss terms), this file (training schedule, calibration,
scoring, save/load).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from ...schemas.errors import ConfigError, ModelIntegrityError
from ...schemas.manifest import ModelManifest, ScalerStats, ThresholdCalibration
from .base import BaseDetector, check_is_fitted, resolve_device, sha256_hex, tensors_from_bytes, tensors_to_bytes
from .hgad_flow import HGADFlow
from .hgad_losses import (
    class_log_likelihoods,
    entropy_loss,
    inter_class_nll,
    intra_centres,
    intra_class_log_likelihood,
    intra_class_nll,
    mutual_information,
    saturating_likelihood_loss,
    squared_distances,
)
from .hgad_preprocess import PreprocessStats, fit_preprocess, transform_preprocess

__all__ = ["HGADDetector", "HGADExplanation"]

FloatArray = npt.NDArray[np.float32]
Labels = npt.ArrayLike | str | int | None

#: Adam settings of the official code (spec section 4): betas (0.95, 0.99), weight decay on the
#: flow only; gradient clipping at norm 5 is the spec's recommended addition (section 7).
_BETAS = (0.95, 0.99)
_FLOW_WEIGHT_DECAY = 1e-4
_GRAD_CLIP_NORM = 5.0
#: Cosine decay floor (lr * 1e-3) and warm-up start (lr / 10), spec section 4.
_ETA_MIN_FACTOR = 1e-3
_WARMUP_START_FACTOR = 0.1
#: Values clipped to +-10 after robust scaling (spec section 7).
_CLIP = 10.0
#: Distance between main centres in the original init (spec section 3).
_CENTRE_DISTANCE = 5.0
#: When no validation rows are given, this share of each class's training rows is held out for
#: model selection and threshold calibration (classes with fewer than _MIN_HOLDOUT_CLASS rows are
#: calibrated on their training scores instead: a few rows cannot be spared).
_HOLDOUT_FRACTION = 0.15
_MIN_HOLDOUT_CLASS = 20
#: An intra-class centre whose mean responsibility among its class's rows is below this is "dead"
#: (spec section 8.3); reported in ``training_summary_``.
_DEAD_CENTRE_RESPONSIBILITY = 1e-3
#: Rows per forward pass at scoring time: bounds the (rows, classes, centres) distance temporary.
_SCORE_CHUNK = 8192


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


class _MixtureFlow(nn.Module):
    """The learnable state in one module: flow, main centres, deltas, inter and intra logits."""

    def __init__(self, dim: int, n_classes: int, n_centres: int, *, n_blocks: int, clamp: float, seed: int) -> None:
        super().__init__()
        self.flow = HGADFlow(dim, n_blocks=n_blocks, clamp=clamp, seed=seed)
        self.centres = nn.Parameter(torch.zeros(n_classes, dim))
        self.deltas = nn.Parameter(torch.zeros(n_classes, n_centres - 1, dim))
        self.logits_pi = nn.Parameter(torch.zeros(n_classes))
        self.logits_omega = nn.Parameter(torch.zeros(n_classes, n_centres))


def init_main_centres(n_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Main centres about 5 apart (spec section 7 "Initialisation").

    The original's repeated scaled one-hot when Y <= D/2; otherwise i.i.d. N(0, sigma^2 I) with
    sigma = 5 / sqrt(2D), because the one-hot pattern gives all-zero centres once Y > D (spec 8.2).
    """
    # resolution: "Y <= D/2" is read as Y <= floor(D/2), which keeps floor(D/Y) >= 2 repeats.
    if n_classes <= dim // 2:
        value = _CENTRE_DISTANCE / math.sqrt((2 * dim) // n_classes)
        centres = torch.zeros(n_classes, dim)
        for y in range(n_classes):
            centres[y, y : n_classes * (dim // n_classes) : n_classes] = value
        return centres
    sigma = _CENTRE_DISTANCE / math.sqrt(2 * dim)
    return torch.randn(n_classes, dim, generator=generator) * sigma


def _as_label(value: Any) -> str | None:
    """Class labels are compared as ``str(label)``; None and NaN mean "class unknown"."""
    # resolution: the spec's classes are categorical names; the manifest keys per-class thresholds
    # by str, so int 3 and "3" are one class (and 3.0 is "3.0", another one).
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return str(value)


class HGADDetector(BaseDetector):
    """Hierarchical Gaussian-mixture normalizing flow for unified multi-class anomaly detection.

    ``score`` returns **higher = more anomalous** (unlike scikit-learn's ``score_samples``): the
    per-dimension negative log-likelihood ``-ell_y(x)`` under the claimed class y's intra-class
    mixture (spec section 7 "Scoring a known class"), or ``min_y -ell_y(x)`` ("normal for at least
    one class") where the class is missing or unknown.

    Parameters
    ----------
    n_blocks : int
        Coupling blocks of the flow (8; the original uses 12).
    n_intra_centres : int
        K, centres per class including the main one (5; the original 10). Keep ~200 training
        events per centre.
    lambda1, lambda2 : float
        Weights of L_g and of L_mi (1 and 100 as in the original; try lambda2 = 10 when classes
        genuinely overlap, spec 8.5).
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

    References
    ----------
    ``shared/spec/hgad.md`` sections 2-5 (the method) and 7-8 (event vectors, failure modes).
    """

    detector_kind: ClassVar[str] = "hgad"

    def __init__(
        self,
        *,
        n_blocks: int = 8,
        n_intra_centres: int = 5,
        lambda1: float = 1.0,
        lambda2: float = 100.0,
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
        name = type(self).__name__

        def fail(param: str, rule: str) -> None:
            raise ConfigError(f"The {param!r} parameter of {name} must be {rule}. Got {getattr(self, param)!r} instead.")

        for param in ("n_blocks", "n_intra_centres", "n_epochs", "batch_size"):
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                fail(param, "an int >= 1")
        for param in ("lambda1", "lambda2"):
            if not isinstance(getattr(self, param), int | float) or getattr(self, param) < 0:
                fail(param, "a float >= 0")
        if not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "a float in [0, 1)")
        if not self.lr > 0:
            fail("lr", "a float > 0")
        if not 0 <= self.stage1_fraction < 1:
            fail("stage1_fraction", "a float in [0, 1)")
        if not self.clamp > 0:
            fail("clamp", "a float > 0")
        if not 0 < self.threshold_quantile <= 1:
            fail("threshold_quantile", "a float in (0, 1]")
        for param in ("use_mi", "use_entropy", "use_intra"):
            if not isinstance(getattr(self, param), bool):
                fail(param, "a bool")
        if self.random_state is not None and not isinstance(self.random_state, int | np.integer):
            fail("random_state", "an int or None")
        try:
            resolve_device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"The 'device' parameter of {name} must be 'auto', 'cpu' or 'cuda[:i]'. Got {self.device!r} instead.") from exc

    @staticmethod
    def _check_matrix(X: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
        array = np.asarray(X, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"{what} must be a non-empty 2-D array (rows x features). Got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} contains NaN or infinite values; impute or drop them before fitting/scoring.")
        return array

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
        labels = np.array([_as_label(v) for v in np.asarray(classes, dtype=object).ravel()], dtype=object)
        if labels.shape[0] != X_all.shape[0]:
            raise ValueError(f"classes must have one label per row of X: got {labels.shape[0]} labels for {X_all.shape[0]} rows.")
        if any(v is None for v in labels):
            raise ValueError("classes contains None/NaN; every training row needs a class label.")
        if feature_names is not None and len(feature_names) != X_all.shape[1]:
            raise ValueError(f"feature_names has {len(feature_names)} names for {X_all.shape[1]} features.")
        seed = int(self.random_state) if self.random_state is not None else int(np.random.default_rng().integers(2**31 - 1))
        rng = np.random.default_rng(seed)
        class_list = sorted(set(labels.tolist()))
        index = {c: i for i, c in enumerate(class_list)}
        y_all = np.array([index[v] for v in labels], dtype=np.int64)

        # resolution: the spec calibrates on "held-out normal events per class" but the API makes
        # X_val optional; without it we hold out a stratified 15 % of each class (>= 20 rows).
        # Rare classes are not merged into "other" (spec section 7): the API has no knob for it and
        # merging would change the caller's class names; callers merge before fit if they want to.
        if X_val is None:
            train_mask = self._holdout_mask(y_all, rng)
            X_tr, y_tr = X_all[train_mask], y_all[train_mask]
            X_va, y_va = X_all[~train_mask], y_all[~train_mask]
        else:
            if classes_val is None:
                raise ValueError("X_val needs classes_val (the class of each validation row).")
            X_tr, y_tr = X_all, y_all
            X_va = self._check_matrix(X_val, "X_val")
            val_labels = [_as_label(v) for v in np.asarray(classes_val, dtype=object).ravel()]
            if len(val_labels) != X_va.shape[0]:
                raise ValueError("classes_val must have one label per row of X_val.")
            keep = np.array([v in index for v in val_labels], dtype=bool)
            # resolution: validation rows of classes absent from training cannot calibrate anything; drop them.
            X_va = X_va[keep]
            y_va = np.array([index[v] for v, k in zip(val_labels, keep) if k], dtype=np.int64)

        self.classes_ = class_list
        self.n_features_in_ = X_all.shape[1]
        self.feature_names_in_ = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(X_all.shape[1])]
        self.preprocess_ = fit_preprocess(X_tr, clip=_CLIP)
        device = resolve_device(self.device)
        dim = self.preprocess_.n_features_out
        n_classes = len(class_list)
        n_centres = self.n_intra_centres if self.use_intra else 1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _MixtureFlow(dim, n_classes, n_centres, n_blocks=self.n_blocks, clamp=self.clamp, seed=seed)
            network.centres.data.copy_(init_main_centres(n_classes, dim, torch.Generator().manual_seed(seed)))
            network.to(device)
            summary = self._train(network, X_tr, y_tr, X_va, y_va, rng, device, seed)
        self.network_ = network.eval()
        self._calibrate(X_tr, y_tr, X_va, y_va)
        summary.update(self._monitor(X_tr, y_tr, X_va, y_va))
        summary["fit_seconds"] = round(time.perf_counter() - started, 3)
        summary["seed"] = seed
        self.training_summary_ = summary
        return self

    @staticmethod
    def _holdout_mask(y: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.bool_]:
        """True for training rows; a stratified ``_HOLDOUT_FRACTION`` of each large-enough class is False."""
        train = np.ones(len(y), dtype=bool)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            if len(rows) >= _MIN_HOLDOUT_CLASS:
                n_hold = max(1, int(round(_HOLDOUT_FRACTION * len(rows))))
                train[rng.choice(rows, n_hold, replace=False)] = False
        return train

    @staticmethod
    def _stratified_batches(y: npt.NDArray[np.int64], batch_size: int, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
        """Shuffled row indices cut into equal batches that each hold every class in proportion.

        resolution: the spec asks for "stratified or class-balanced" batches (8.11). We stratify:
        each row gets the key (random rank within its class + U(0,1)) / class size; sorting by the key
        interleaves the classes evenly, so every batch sees each class at its training frequency.
        Batches have equal size (``array_split``), nothing is dropped.
        """
        key = np.empty(len(y))
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            key[rows] = (rng.permutation(len(rows)) + rng.random(len(rows))) / len(rows)
        order = np.argsort(key, kind="stable")
        n_batches = max(1, math.ceil(len(y) / batch_size))
        return [order[b] for b in np.array_split(np.arange(len(y)), n_batches)]

    def _lr_at(self, epoch: int, step: int, n_steps: int, n_stage1: int) -> float:
        """Cosine per epoch (held within an epoch), linear per-step warm-up over stage 1 (spec section 4).

        resolution: the original counts the cosine in 25 meta-epochs; here one epoch plays a
        meta-epoch's role, and the warm-up window is stage 1 (``stage1_fraction`` of the epochs).
        """
        eta_min = self.lr * _ETA_MIN_FACTOR

        def cosine(e: int) -> float:
            return eta_min + (self.lr - eta_min) * (1 + math.cos(math.pi * e / self.n_epochs)) / 2

        if epoch < n_stage1:
            progress = (epoch * n_steps + step) / max(1, n_stage1 * n_steps)
            start = self.lr * _WARMUP_START_FACTOR
            return start + (cosine(n_stage1) - start) * progress
        return cosine(epoch)

    def _train(
        self,
        network: _MixtureFlow,
        X_tr: npt.NDArray[np.float64],
        y_tr: npt.NDArray[np.int64],
        X_va: npt.NDArray[np.float64],
        y_va: npt.NDArray[np.int64],
        rng: np.random.Generator,
        device: torch.device,
        seed: int,
    ) -> dict[str, Any]:
        stats = self.preprocess_
        is_noisy = bool(stats.is_discrete.any() or stats.n_pad)
        x_fixed = torch.from_numpy(transform_preprocess(X_tr, stats)).to(device)
        y_t = torch.from_numpy(y_tr).to(device)
        x_val = torch.from_numpy(transform_preprocess(X_va, stats)).to(device) if len(X_va) else None
        y_val = torch.from_numpy(y_va).to(device)
        flow_params = list(network.flow.parameters())
        mixture_params = [network.centres, network.deltas, network.logits_pi, network.logits_omega]
        optimizer = torch.optim.Adam(
            [{"params": flow_params, "weight_decay": _FLOW_WEIGHT_DECAY}, {"params": mixture_params, "weight_decay": 0.0}],
            lr=self.lr, betas=_BETAS,
        )
        # resolution: stage 1 lasts round(stage1_fraction * n_epochs) epochs, at least 1 and at most
        # n_epochs - 1, so both stages exist whenever n_epochs >= 2 (spec 8.9: count it in epochs of
        # the whole run, not as "2 epochs").
        n_stage1 = min(max(1, round(self.stage1_fraction * self.n_epochs)), max(1, self.n_epochs - 1))
        n_steps = max(1, math.ceil(len(y_tr) / self.batch_size))
        best_state: dict[str, torch.Tensor] | None = None
        best_nll, best_epoch = math.inf, self.n_epochs - 1
        val_curve: list[float] = []
        n_skipped = 0
        for epoch in range(self.n_epochs):
            if epoch == n_stage1:
                self._init_deltas(network, x_fixed, y_t, seed)
            is_stage2 = epoch >= n_stage1
            x_epoch = torch.from_numpy(transform_preprocess(X_tr, stats, rng=rng)).to(device) if is_noisy else x_fixed
            network.train()
            for step, rows in enumerate(self._stratified_batches(y_tr, self.batch_size, rng)):
                for group in optimizer.param_groups:
                    group["lr"] = self._lr_at(epoch, step, n_steps, n_stage1)
                batch = torch.from_numpy(rows).to(device)
                loss = self._loss(network, x_epoch[batch], y_t[batch], is_stage2)
                if not torch.isfinite(loss):
                    n_skipped += 1  # spec 8.1: never let one bad batch poison the weights
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(network.parameters(), _GRAD_CLIP_NORM)
                optimizer.step()
            if is_stage2 and x_val is not None and len(y_va):
                nll = self._balanced_nll(network, x_val, y_val)
                val_curve.append(round(nll, 5))
                # resolution: model selection = lowest class-balanced validation NLL over stage-2
                # epochs (spec section 7 "Model selection"; never test AUROC as in the original).
                if nll < best_nll:
                    best_nll, best_epoch = nll, epoch
                    best_state = copy.deepcopy(network.state_dict())
        if best_state is not None:
            network.load_state_dict(best_state)
        return {
            "n_epochs_run": self.n_epochs, "n_stage1_epochs": n_stage1, "selected_epoch": best_epoch,
            "val_nll_selected": None if math.isinf(best_nll) else round(best_nll, 5),
            "val_nll_curve": val_curve, "n_skipped_steps": n_skipped,
            "n_train": int(len(y_tr)), "n_val": int(len(y_va)),
        }

    def _loss(self, network: _MixtureFlow, x: torch.Tensor, y: torch.Tensor, is_stage2: bool) -> torch.Tensor:
        z, log_det = network.flow(x)
        loss = self.lambda1 * inter_class_nll(z, log_det, network.centres, network.logits_pi)
        if self.use_mi:
            loss = loss - self.lambda2 * mutual_information(z, network.centres, network.logits_pi, y, smoothing=self.label_smoothing)
        if self.use_entropy:
            loss = loss + entropy_loss(z, network.centres)
        if is_stage2:
            if self.use_intra:
                loss = loss + intra_class_nll(z, log_det, network.centres, network.deltas, network.logits_omega, y)
            # resolution: use_intra=False keeps L_z (with the K = 1 likelihood); the ablation removes
            # the extra centres and L_intra only.
            ll = intra_class_log_likelihood(z, log_det, network.centres, network.deltas, network.logits_omega, y)
            loss = loss + saturating_likelihood_loss(ll)
        return loss

    @torch.no_grad()
    def _init_deltas(self, network: _MixtureFlow, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        """Seed the extra centres from k-means on each class's stage-1 latents (spec section 7).

        resolution (documented deviation from the original's delta ~ N(0, I), which leaves the extra
        centres ~sqrt(D) away and dead, spec 8.3): run k-means with K clusters on the class's latents,
        give the cluster nearest the main centre to the main centre itself (mu_{y,1} = mu_y has no
        delta) and set the other K-1 deltas to centroid - mu_y. Classes with fewer than 2K rows get
        0.1 * N(0, I) deltas.
        """
        n_extra = network.deltas.shape[1]
        if n_extra == 0:
            return
        network.eval()
        z = torch.cat([network.flow(x[i : i + _SCORE_CHUNK])[0] for i in range(0, len(x), _SCORE_CHUNK)]).cpu().numpy()
        y_np = y.cpu().numpy()
        generator = torch.Generator().manual_seed(seed + 1)
        deltas = 0.1 * torch.randn(network.deltas.shape, generator=generator)
        centres = network.centres.detach().cpu().numpy()
        for c in range(centres.shape[0]):
            zc = z[y_np == c]
            if len(zc) < 2 * (n_extra + 1):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate latents: fewer distinct clusters is fine
                km = KMeans(n_clusters=n_extra + 1, n_init=3, random_state=seed).fit(zc)
            centroids = km.cluster_centers_
            nearest_main = np.argsort(((centroids - centres[c]) ** 2).sum(1))
            deltas[c] = torch.from_numpy(centroids[nearest_main[1:]] - centres[c]).float()
        network.deltas.data.copy_(deltas.to(network.deltas.device))

    @torch.no_grad()
    def _balanced_nll(self, network: _MixtureFlow, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean over classes of the mean -ell_y of their validation rows (rare classes count fully)."""
        network.eval()
        ll = self._claimed_ll(network, x, y)
        per_class = [(-ll[y == c]).mean().item() for c in torch.unique(y)]
        return float(np.mean(per_class))

    @staticmethod
    def _claimed_ll(network: _MixtureFlow, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = []
        for i in range(0, len(x), _SCORE_CHUNK):
            z, log_det = network.flow(x[i : i + _SCORE_CHUNK])
            ll = class_log_likelihoods(z, log_det, network.centres, network.deltas, network.logits_omega)
            parts.append(ll.gather(1, y[i : i + _SCORE_CHUNK].unsqueeze(1)).squeeze(1))
        return torch.cat(parts)

    def _calibrate(self, X_tr: npt.NDArray[np.float64], y_tr: npt.NDArray[np.int64], X_va: npt.NDArray[np.float64], y_va: npt.NDArray[np.int64]) -> None:
        """Per-class thresholds from held-out normals (spec section 7 "Calibration").

        resolution: a class without validation rows is calibrated on its training scores (biased low,
        so it alerts more; ``training_summary_['calibrated_on_train']`` lists such classes). The
        class-agnostic threshold ``threshold_`` is the same quantile of min_y -ell_y over all held-out
        rows (all training rows when there are none), for events of unknown classes (section 7,
        "Onboarding a new class", step 3).
        """
        ll_va = self._log_likelihoods(X_va) if len(X_va) else np.zeros((0, len(self.classes_)))
        ll_tr = self._log_likelihoods(X_tr)
        thresholds: dict[str, float] = {}
        on_train: list[str] = []
        for c, name in enumerate(self.classes_):
            scores = -ll_va[y_va == c, c]
            if len(scores) == 0:
                scores = -ll_tr[y_tr == c, c]
                on_train.append(name)
            thresholds[name] = float(np.quantile(scores, self.threshold_quantile))
        agnostic = -(ll_va if len(ll_va) else ll_tr).max(axis=1)
        self.thresholds_ = thresholds
        self.threshold_ = float(np.quantile(agnostic, self.threshold_quantile))
        self._calibrated_on_train = on_train
        self._n_calibration = int(len(ll_va))

    @torch.no_grad()
    def _monitor(self, X_tr: npt.NDArray[np.float64], y_tr: npt.NDArray[np.int64], X_va: npt.NDArray[np.float64], y_va: npt.NDArray[np.int64]) -> dict[str, Any]:
        """The health checks of spec section 8: class accuracy, mixture entropies, dead centres."""
        network = self.network_
        device = network.centres.device
        x = torch.from_numpy(transform_preprocess(X_tr, self.preprocess_)).to(device)
        z = torch.cat([network.flow(x[i : i + _SCORE_CHUNK])[0] for i in range(0, len(x), _SCORE_CHUNK)])
        y = torch.from_numpy(y_tr).to(device)
        mus = intra_centres(network.centres, network.deltas)
        log_omega = torch.log_softmax(network.logits_omega, dim=1)
        resp = torch.softmax(log_omega[y] - 0.5 * (z.unsqueeze(1) - mus[y]).pow(2).sum(-1), dim=1)
        mean_resp = torch.stack([resp[y == c].mean(0) for c in range(len(self.classes_))])
        pi = torch.softmax(network.logits_pi, dim=0)
        omega = log_omega.exp()
        pairwise = torch.pdist(network.centres) if len(self.classes_) > 1 else torch.zeros(1)
        summary: dict[str, Any] = {
            "classes": list(self.classes_),
            "class_counts": {name: int((y_tr == c).sum()) for c, name in enumerate(self.classes_)},
            "n_features_model": self.preprocess_.n_features_out,
            "pi_entropy": round(float(-(pi * pi.log()).sum()), 4),
            "omega_entropy": [round(float(v), 4) for v in -(omega * log_omega).sum(1)],
            "n_dead_intra_centres": int((mean_resp < _DEAD_CENTRE_RESPONSIBILITY).sum()),
            "min_centre_distance": round(float(pairwise.min()), 4),
            "calibrated_on_train": list(self._calibrated_on_train),
        }
        if len(y_va):
            xv = torch.from_numpy(transform_preprocess(X_va, self.preprocess_)).to(device)
            zv = torch.cat([network.flow(xv[i : i + _SCORE_CHUNK])[0] for i in range(0, len(xv), _SCORE_CHUNK)])
            predicted = squared_distances(zv, network.centres).argmin(1).cpu().numpy()
            summary["val_class_accuracy"] = round(float((predicted == y_va).mean()), 4)
        return summary

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
            for i in range(0, len(x), _SCORE_CHUNK):
                z, log_det = network.flow(x[i : i + _SCORE_CHUNK].to(device))
                out.append(class_log_likelihoods(z, log_det, network.centres, network.deltas, network.logits_omega).double().cpu())
        return torch.cat(out).numpy()

    def _class_indices(self, classes: Labels, n_rows: int) -> npt.NDArray[np.int64]:
        """Index of each row's class in ``classes_``, -1 where missing or unknown."""
        if classes is None:
            return np.full(n_rows, -1, dtype=np.int64)
        values = np.asarray(classes, dtype=object)
        if values.ndim == 0:  # one label for the whole batch
            values = np.full(n_rows, values.item(), dtype=object)
        values = values.ravel()
        if len(values) != n_rows:
            raise ValueError(f"classes must have one label per row of X: got {len(values)} labels for {n_rows} rows.")
        index = {c: i for i, c in enumerate(self.classes_)}
        return np.array([index.get(_as_label(v), -1) for v in values], dtype=np.int64)  # type: ignore[arg-type]

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
        ll = self._log_likelihoods(X)
        idx = self._class_indices(classes, ll.shape[0])
        agnostic = -ll.max(axis=1)
        claimed = -ll[np.arange(ll.shape[0]), np.maximum(idx, 0)]
        return np.where(idx >= 0, claimed, agnostic).astype(np.float32)

    def _row_thresholds(self, idx: npt.NDArray[np.int64]) -> FloatArray:
        """The calibrated threshold of each row's class, the class-agnostic one where idx is -1."""
        per_class = np.array([self.thresholds_[c] for c in self.classes_], dtype=np.float64)
        return np.where(idx >= 0, per_class[np.maximum(idx, 0)], self.threshold_).astype(np.float32)

    def score_with_threshold(self, X: npt.ArrayLike, classes: Labels = None) -> tuple[FloatArray, FloatArray]:
        """``score(X, classes)`` and the threshold that applies to each row, without the explanation.

        The scorer's cheap path: one flow pass and one class lookup for the whole batch; per-row
        class names and gaps (:meth:`explain`) are then computed for the rows over threshold only.
        Values equal those of :meth:`explain` for the same rows.
        """
        ll = self._log_likelihoods(X)
        idx = self._class_indices(classes, ll.shape[0])
        claimed = -ll[np.arange(ll.shape[0]), np.maximum(idx, 0)]
        score = np.where(idx >= 0, claimed, -ll.max(axis=1)).astype(np.float32)
        return score, self._row_thresholds(idx)

    def explain(self, X: npt.ArrayLike, classes: Labels = None) -> HGADExplanation:
        """Score plus best class, claimed-vs-best gap and the threshold that applies to each row."""
        ll = self._log_likelihoods(X)
        n = ll.shape[0]
        idx = self._class_indices(classes, n)
        known = idx >= 0
        best = ll.argmax(axis=1)
        claimed_ll = ll[np.arange(n), np.maximum(idx, 0)]
        score = np.where(known, -claimed_ll, -ll.max(axis=1)).astype(np.float32)
        # resolution: without a claimed class the gap is undefined; NaN rather than 0 so it is never
        # mistaken for "claimed class is the best one".
        gap = np.where(known, ll.max(axis=1) - claimed_ll, np.nan).astype(np.float32)
        return HGADExplanation(
            score=score,
            claimed_class=[self.classes_[i] if i >= 0 else None for i in idx],
            best_class=[self.classes_[i] for i in best],
            claimed_vs_best_gap=gap,
            threshold=self._row_thresholds(idx),
        )

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, torch.Tensor]:
        stats = self.preprocess_
        tensors = {f"net.{k}": v for k, v in self.network_.state_dict().items()}
        tensors.update({
            "pre.keep": torch.from_numpy(stats.keep.astype(np.uint8)),
            "pre.is_discrete": torch.from_numpy(stats.is_discrete.astype(np.uint8)),
            "pre.log1p_mask": torch.from_numpy(stats.log1p_mask.astype(np.uint8)),
            "pre.offset": torch.from_numpy(stats.offset.astype(np.float64)),
            "pre.scale": torch.from_numpy(stats.scale.astype(np.float64)),
            "pre.n_pad": torch.tensor([stats.n_pad], dtype=torch.int64),
        })
        return tensors

    def save(self) -> tuple[bytes, ModelManifest]:
        """Safetensors bytes and a manifest with per-class thresholds and the class list."""
        check_is_fitted(self, "network_")
        blob = tensors_to_bytes(self._tensors())
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
        """Rebuild a fitted detector from :meth:`save`'s output (sha256 and shapes checked)."""
        if manifest.detector != "hgad":
            raise ModelIntegrityError(f"manifest is for detector {manifest.detector!r}, not 'hgad'; load it with its own class.")
        classes = manifest.training_summary.get("classes")
        if not classes:
            raise ModelIntegrityError("manifest.training_summary lacks 'classes'; it was not written by HGADDetector.save().")
        pre_keys = {"pre.keep", "pre.is_discrete", "pre.log1p_mask", "pre.offset", "pre.scale", "pre.n_pad"}
        tensors = tensors_from_bytes(weights, manifest, expected=pre_keys | {"net.centres", "net.logits_omega"})
        detector = cls(**manifest.params)
        keep = tensors["pre.keep"].numpy().astype(bool)
        if len(keep) != len(manifest.feature_names):
            raise ModelIntegrityError(f"weights expect {len(keep)} features, the manifest names {len(manifest.feature_names)}.")
        clip = manifest.scaler.clip if manifest.scaler is not None and manifest.scaler.clip is not None else _CLIP
        detector.preprocess_ = PreprocessStats(
            keep=keep, is_discrete=tensors["pre.is_discrete"].numpy().astype(bool),
            log1p_mask=tensors["pre.log1p_mask"].numpy().astype(bool), offset=tensors["pre.offset"].numpy(),
            scale=tensors["pre.scale"].numpy(), clip=float(clip), n_pad=int(tensors["pre.n_pad"].item()),
        )
        n_classes, dim = tensors["net.centres"].shape
        n_centres = tensors["net.logits_omega"].shape[1]
        if n_classes != len(classes):
            raise ModelIntegrityError(f"weights hold {n_classes} class centres, the manifest lists {len(classes)} classes.")
        with torch.random.fork_rng(devices=[]):  # the throwaway init must not consume the caller's RNG
            network = _MixtureFlow(dim, n_classes, n_centres, n_blocks=detector.n_blocks, clamp=detector.clamp, seed=0)
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelIntegrityError(f"weights do not fit an HGAD network with n_blocks={detector.n_blocks}: {exc}") from exc
        detector.network_ = network.to(resolve_device(detector.device)).eval()
        detector.classes_ = [str(c) for c in classes]
        detector.n_features_in_ = len(keep)
        detector.feature_names_in_ = list(manifest.feature_names)
        detector.thresholds_ = dict(manifest.calibration.per_class)
        detector.threshold_ = float(manifest.threshold) if manifest.threshold is not None else math.inf
        detector.training_summary_ = dict(manifest.training_summary)
        detector._calibrated_on_train = list(manifest.training_summary.get("calibrated_on_train", []))
        detector._n_calibration = manifest.calibration.n_samples
        return detector
