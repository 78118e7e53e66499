"""Rebuild the right detector class from a manifest (``detector: mnp | hgad | gauss``)."""
from __future__ import annotations

import importlib
from typing import Any

from ...schemas.errors import ModelIntegrityError
from ...schemas.manifest import ModelManifest

__all__ = ["DETECTOR_CLASSES", "detector_class", "load_detector"]

#: Manifest ``detector`` kind -> (module, class). Imported lazily: a scorer serving MNP never
#: imports the flow code, and a new kind is one line here plus one in ``schemas.manifest.DetectorKind``.
DETECTOR_CLASSES: dict[str, tuple[str, str]] = {
    "gauss": (".gauss", "GaussDetector"),
    "hgad": (".hgad", "HGADDetector"),
    "mnp": (".mnp", "MNPDetector"),
}


def detector_class(kind: str) -> Any:
    """The detector class registered for a manifest's ``detector`` kind."""
    if kind not in DETECTOR_CLASSES:
        raise ModelIntegrityError(f"unknown detector kind {kind!r}; known: {sorted(DETECTOR_CLASSES)}")
    module, name = DETECTOR_CLASSES[kind]
    return getattr(importlib.import_module(module, __package__), name)


def load_detector(weights: bytes, manifest: ModelManifest) -> Any:
    """A fitted detector from safetensors bytes + manifest (checksum verified by the detector's ``load``)."""
    return detector_class(manifest.detector).load(weights, manifest)
