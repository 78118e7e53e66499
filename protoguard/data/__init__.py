"""Data files that ship with the package (see README.md here for where they came from)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_sample"]


def bundled_sample() -> Path:
    """The bundled UNSW-NB15 sample: what ``protoguard demo`` and ``replay`` use when given no file."""
    return Path(str(resources.files(__package__) / "unsw_nb15_sample.npz"))
