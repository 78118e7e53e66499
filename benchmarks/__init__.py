"""Re-runnable benchmarks: the offline detector harness (``protoguard bench``) and stream benchmarks."""
from __future__ import annotations

__all__: list[str] = []
