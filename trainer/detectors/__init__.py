"""Detectors that follow the contract in :mod:`.base` (fit / score / save / load)."""
from __future__ import annotations

from .base import BaseDetector, Detector
from .explanation import Explanation
from .gauss import GaussDetector
from .hgad import HGADDetector
from .mnp import MNPDetector

__all__ = ["BaseDetector", "Detector", "Explanation", "GaussDetector", "HGADDetector", "MNPDetector"]
