"""Runs the Examples in every module's docstrings, so that documented behaviour cannot rot.

(pytest's --doctest-modules imports by file path, which does not know that ``stream/`` installs
as ``protoguard.stream``; so the doctests are collected here, by module name.)
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["protoguard.schemas", "protoguard.stream", "protoguard.trainer", "protoguard.trainer.detectors",
            "protoguard.benchmarks.peers"]
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(module.__path__) if not m.ispkg]
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"
