"""Stream side: decode, score and alert per micro-batch; the scorer and label workers."""
from __future__ import annotations

__all__: list[str] = []
