"""protoguard: streaming anomaly detection that learns from analysts' labels.

The code lives in the top-level folders ``schemas/``, ``trainer/`` and ``stream/`` (the design
card's layout); they install as ``protoguard.schemas``, ``protoguard.trainer`` and
``protoguard.stream``.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
