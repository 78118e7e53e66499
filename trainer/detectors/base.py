"""The detector contract every protoguard detector follows (scikit-learn habits, River's sign).

- ``__init__`` stores keyword-only hyperparameters verbatim: no validation, no tensors, no I/O.
- ``fit(X, y=None, ...) -> self`` validates the hyperparameters, then sets learned state; only
  learned state ends in ``_``.
- ``score(X) -> ndarray (n,)``: **higher = more anomalous** (unlike scikit-learn's
  ``score_samples``, where higher = more normal).
- ``save() -> (weights: bytes, manifest)`` and ``load(weights, manifest)``: safetensors bytes
  plus a :class:`~protoguard.schemas.manifest.ModelManifest`; the sha256 of the bytes and the
  tensor names are checked on load. A detector never touches Redis or files itself.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ...schemas.errors import ModelIntegrityError, NotFittedError
from ...schemas.manifest import ModelManifest
from .explanation import Explanation, from_prototype_explanation

__all__ = [
    "BaseDetector",
    "Detector",
    "FloatMatrix",
    "check_is_fitted",
    "resolve_device",
    "sha256_hex",
    "tensors_from_bytes",
    "tensors_to_bytes",
]

FloatMatrix = npt.NDArray[np.float32]


@runtime_checkable
class Detector(Protocol):
    """What the scorer and trainer need from a detector."""

    def fit(self, X: FloatMatrix, y: npt.NDArray[Any] | None = None) -> Self: ...

    def score(self, X: FloatMatrix) -> npt.NDArray[np.float32]: ...

    def save(self) -> tuple[bytes, ModelManifest]: ...

    def score_rows(self, X: FloatMatrix, classes: Any = None) -> npt.NDArray[np.float32]: ...

    def explain_rows(self, X: FloatMatrix, classes: Any = None, *, n_top: int = 3) -> Explanation: ...


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors as safetensors bytes (contiguous CPU copies; never pickle)."""
    return st_save({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()})


def tensors_from_bytes(blob: bytes, manifest: ModelManifest, expected: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Verify ``blob`` against ``manifest.weights_sha256`` and parse it as safetensors."""
    digest = sha256_hex(blob)
    if manifest.weights_sha256 and digest != manifest.weights_sha256:
        raise ModelIntegrityError(
            f"weights sha256 {digest[:12]}... does not match the manifest's "
            f"{manifest.weights_sha256[:12]}... (version {manifest.version or '?'}); refusing to load"
        )
    try:
        tensors = st_load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError / ValueError
        raise ModelIntegrityError(f"weights are not valid safetensors: {exc}") from exc
    if expected is not None and not expected <= tensors.keys():
        missing = sorted(expected - tensors.keys())
        raise ModelIntegrityError(f"weights lack tensors {missing}")
    return tensors


def resolve_device(device: str) -> torch.device:
    """``"auto"`` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_is_fitted(detector: object, attribute: str) -> None:
    if getattr(detector, attribute, None) is None:
        name = type(detector).__name__
        raise NotFittedError(
            f"This {name} instance is not fitted yet. Call fit(X) or {name}.load(weights, manifest) first."
        )


class BaseDetector:
    """get_params/set_params/clone from the ``__init__`` signature, as in scikit-learn."""

    detector_kind: ClassVar[str] = ""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    # ---------------------------------------------------------------- the scorer's contract
    def score_rows(self, X: Any, classes: Any = None) -> npt.NDArray[np.float32]:
        """Scores of every row given each row's claimed class (None: unknown); higher = more anomalous.

        The default serves class-blind detectors, which ignore ``classes``; class-aware detectors
        (HGAD, gauss) override it to score each row under its claimed class.
        """
        return self.score(X)  # type: ignore[attr-defined]

    def explain_rows(self, X: Any, classes: Any = None, *, n_top: int = 3) -> Explanation:
        """The alert view (:class:`Explanation`) of rows the scorer alerts on; must accept zero rows.

        The default maps a prototype detector's ``explain`` (MNP: nearest prototype, similarity,
        reconstruction error, top features); HGAD and gauss override it.
        """
        return from_prototype_explanation(self.explain(X, n_top=n_top))  # type: ignore[attr-defined]

    def clone(self) -> Self:
        """An unfitted copy with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
