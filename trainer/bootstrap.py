"""From a fitted detector to a served model: calibrate, save, register, promote, in one call.

Why one function: ``protoguard train``, the demo, the benchmarks and the tests all turn a fitted
detector into a registry version. Each step has a rule that must hold everywhere (the threshold is
calibrated on reference traffic the detector calls normal, the manifest carries it, a version is
promoted only after it is registered), so the steps live here once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from ..schemas.manifest import ModelManifest
from .registry import ModelRegistry
from .training import calibrate, finalize_manifest

__all__ = ["BootstrappedModel", "Promote", "bootstrap_model"]

Promote = Literal["always", "if_first", "never"]


class _SavableDetector(Protocol):
    def score(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def save(self) -> tuple[bytes, ModelManifest]: ...


@dataclass(frozen=True)
class BootstrappedModel:
    weights: bytes
    manifest: ModelManifest
    #: the registry version, None when no registry was given (packaged only)
    version: str | None = None
    promoted: bool = False

    @property
    def threshold(self) -> float:
        return float(self.manifest.threshold)


def bootstrap_model(detector: _SavableDetector, X_reference: npt.NDArray[np.float32], *, alert_budget: float,
                    summary: dict[str, Any] | None = None, registry: ModelRegistry | None = None,
                    note: str = "", promote: Promote = "if_first", reason: str = "first model") -> BootstrappedModel:
    """Calibrate ``detector`` so that ``alert_budget`` of ``X_reference`` alerts, package its weights and
    manifest, and (with a registry) register it and promote it as ``promote`` says.

    ``X_reference`` is traffic taken as normal: the unlabelled training rows, as the scheduler uses.
    ``promote="if_first"`` promotes only when nothing is served yet, so a first model goes live and a
    later manual fit waits for ``protoguard model promote``.
    """
    threshold, calibration = calibrate(detector.score(X_reference), alert_budget=alert_budget)
    weights, manifest = detector.save()
    manifest = finalize_manifest(manifest, threshold=threshold, calibration=calibration, summary=summary or {})
    if registry is None:
        return BootstrappedModel(weights, manifest)
    version = registry.register(weights, manifest, note=note)
    promoted = promote == "always" or (promote == "if_first" and registry.current_version() is None)
    if promoted:
        registry.promote(version, reason=reason)
    return BootstrappedModel(weights, manifest, version=version, promoted=promoted)
