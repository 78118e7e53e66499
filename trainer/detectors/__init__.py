"""Detectors that follow the contract in :mod:`.base` (fit / score / save / load)."""
from __future__ import annotations

from .base import BaseDetector, Detector

__all__ = ["BaseDetector", "Detector"]
