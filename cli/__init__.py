"""The ``protoguard`` command line: reads Settings once, builds clients, starts a process."""
from __future__ import annotations

__all__: list[str] = []
