"""Rebuild the right detector class from a manifest (``detector: mnp | hgad``)."""
from __future__ import annotations

from typing import Any

from ...schemas.errors import ModelIntegrityError
from ...schemas.manifest import ModelManifest

__all__ = ["load_detector"]


def load_detector(weights: bytes, manifest: ModelManifest) -> Any:
    """A fitted detector from safetensors bytes + manifest (checksum verified by the detector's ``load``)."""
    if manifest.detector == "mnp":
        from .mnp import MNPDetector
        return MNPDetector.load(weights, manifest)
    if manifest.detector == "hgad":
        from .hgad import HGADDetector
        return HGADDetector.load(weights, manifest)
    raise ModelIntegrityError(f"unknown detector kind {manifest.detector!r}")
