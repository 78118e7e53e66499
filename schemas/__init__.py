"""Wire formats and configuration shared by every protoguard process (imports nothing else of ours).

The names below are loaded on first use (PEP 562), so a process that needs only its settings, such
as ``protoguard --help``, does not build every wire model's validator at start-up.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_SOURCES = {
    "Alert": "alerts", "FeatureContribution": "alerts", "alert_id": "alerts",
    "ConfigError": "errors", "ModelIntegrityError": "errors", "NotFittedError": "errors",
    "ProtoguardError": "errors", "RegistryError": "errors", "StackError": "errors",
    "DeadLetter": "events", "Event": "events", "Label": "events",
    "DetectorKind": "manifest", "ModelManifest": "manifest", "ScalerStats": "manifest",
    "ThresholdCalibration": "manifest",
    "Settings": "settings", "load_settings": "settings",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
