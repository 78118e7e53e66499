"""Wire formats and configuration shared by every protoguard process (imports nothing else of ours)."""
from __future__ import annotations

from .alerts import Alert, FeatureContribution, alert_id
from .errors import (
    ConfigError,
    ModelIntegrityError,
    NotFittedError,
    ProtoguardError,
    RegistryError,
    StackError,
)
from .events import DeadLetter, Event, Label
from .manifest import DetectorKind, ModelManifest, ScalerStats, ThresholdCalibration
from .settings import Settings, load_settings

__all__ = [
    "Alert",
    "ConfigError",
    "DeadLetter",
    "DetectorKind",
    "Event",
    "FeatureContribution",
    "Label",
    "ModelIntegrityError",
    "ModelManifest",
    "NotFittedError",
    "ProtoguardError",
    "RegistryError",
    "ScalerStats",
    "Settings",
    "StackError",
    "ThresholdCalibration",
    "alert_id",
    "load_settings",
]
