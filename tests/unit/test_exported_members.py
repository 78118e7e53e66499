"""Each package lists its public names in ``__all__``, sorted, and every name exists."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import protoguard

PACKAGES = ["protoguard.schemas", "protoguard.trainer", "protoguard.trainer.detectors", "protoguard.stream"]


def _modules() -> list[str]:
    names = list(PACKAGES)
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__) if not info.ispkg]
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ lists missing {symbol}"


def test_version() -> None:
    assert protoguard.__version__
