"""The model manifest: everything a scorer needs besides the weights, and the model's history."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DetectorKind", "ModelManifest", "ScalerStats", "ThresholdCalibration"]

DetectorKind = Literal["mnp", "hgad", "gauss"]


class ScalerStats(BaseModel):
    """Per-feature scaling learned at fit time (MinMax for MNP, robust for HGAD)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["minmax", "robust"]
    offset: list[float]
    scale: list[float]
    log1p_mask: list[bool] | None = None
    clip: float | None = None


class ThresholdCalibration(BaseModel):
    """How the alert threshold was set, so an operator can tell why the alert rate is what it is."""

    model_config = ConfigDict(frozen=True)

    method: Literal["alert_budget", "precision_target", "normal_quantile", "manual", "none"]
    target: float | None = None
    n_samples: int = 0
    per_class: dict[str, float] = {}


class ModelManifest(BaseModel):
    """Versioned description of one model; immutable once registered."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = 1
    version: str = ""
    detector: DetectorKind
    params: dict[str, Any] = {}
    feature_names: list[str]
    scaler: ScalerStats | None = None
    n_prototypes: int | None = None
    threshold: float | None = None
    calibration: ThresholdCalibration = ThresholdCalibration(method="none")
    training_summary: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    parent_version: str | None = None
    status: Literal["candidate", "promoted", "rejected", "retired"] = "candidate"
    created_at: datetime = Field(default_factory=lambda: datetime.now().astimezone())
    weights_sha256: str = ""
