"""Compact torch/sklearn implementations of the weakly supervised peers MNP is compared with.

Written from the papers' descriptions for ``protoguard bench``; each module's docstring says
what it simplifies. All share the benchmark signature ``fit(X, y_semi) -> self`` (``y_semi``: 1
labelled anomaly, 0 unlabelled) and ``score(X)`` with higher = more anomalous.
"""
from __future__ import annotations

from .deepsad import DeepSAD
from .devnet import DevNet
from .feawad import FEAWAD
from .hgb import HGBPeer
from .iforest import IsolationForestPeer
from .prenet import PReNet
from .rosas import RoSAS

__all__ = ["DeepSAD", "DevNet", "FEAWAD", "HGBPeer", "IsolationForestPeer", "PReNet", "RoSAS"]
