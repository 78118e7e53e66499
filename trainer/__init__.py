"""Training side: detectors, features, evaluation, the Redis model registry and label store."""
from __future__ import annotations

__all__: list[str] = []
