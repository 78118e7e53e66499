"""Each module lists its public names in ``__all__``: sorted, every listed name exists, and every
public name the module itself defines is listed (nothing public hides outside ``__all__``)."""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import pkgutil
from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

import pytest

import protoguard

#: packages whose every module (the package itself and its non-package submodules) is checked
PACKAGES = ["protoguard.data", "protoguard.demo", "protoguard.schemas", "protoguard.stream", "protoguard.trainer",
            "protoguard.trainer.detectors"]
#: single modules checked on their own
MODULES = ["protoguard.composition", "protoguard.operations", "protoguard.services"]


def _modules() -> list[str]:
    names = list(PACKAGES) + list(MODULES)
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__)
                  if not info.ispkg and not _is_extension(info)]
    return sorted(set(names))


def _is_extension(info: pkgutil.ModuleInfo) -> bool:
    """A compiled module (stream/_rowscan.c): no Python source to read, private by its name."""
    spec = info.module_finder.find_spec(info.name)  # type: ignore[call-arg]
    return spec is not None and spec.origin is not None and spec.origin.endswith(tuple(EXTENSION_SUFFIXES))


def _assigned(body: list[ast.stmt]) -> list[str]:
    """Names bound at module level by ``def``, ``class``, assignments and ``type`` aliases, including
    those under a top-level ``if``/``try``/``with`` (not inside functions or classes)."""
    names: list[str] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif type(node).__name__ == "TypeAlias":  # ``type X = ...`` (ast.TypeAlias exists from Python 3.12)
            names.append(node.name.id)  # type: ignore[attr-defined]
        elif isinstance(node, ast.If):
            names += _assigned(node.body) + _assigned(node.orelse)
        elif isinstance(node, ast.Try):
            names += _assigned(node.body) + _assigned(node.orelse) + _assigned(node.finalbody)
            names += [name for handler in node.handlers for name in _assigned(handler.body)]
        elif isinstance(node, ast.With):
            names += _assigned(node.body)
    return names


def _defined_public_names(module: ModuleType) -> set[str]:
    """Public names the module defines itself (not ones it imports).

    Functions and classes count when their ``__module__`` is this module; any other value when the
    module's source binds the name at top level. Loggers are left out: ``log = getLogger(__name__)``
    is plumbing, not API (and a star import must not bring one in).
    """
    source = inspect.getsource(module)
    names = {name for name in _assigned(ast.parse(source).body) if hasattr(module, name)}
    names |= {name for name, value in vars(module).items()
              if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__}
    return {name for name in names
            if not name.startswith("_") and not isinstance(getattr(module, name), logging.Logger)}


@pytest.mark.parametrize("name", _modules())
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [symbol for symbol in exported if not hasattr(module, symbol)]
    assert not missing, f"{name}.__all__ lists names the module does not have: {missing}"
    unlisted = sorted(_defined_public_names(module) - set(exported))
    assert not unlisted, (f"{name} defines public names missing from __all__: {unlisted} "
                          "(add them, or prefix private helpers with an underscore)")


def test_the_completeness_check_sees_defs_classes_constants_and_aliases_but_not_imports() -> None:
    source = (
        "import os\nfrom typing import Literal\n"
        "A = 1\nB: int = 2\nC = Literal['x']\nD = C | None\n"
        "def f(): pass\nclass K: pass\n"
        "if os.name:\n    E = 3\nelse:\n    E = 4\n"
        "try:\n    G = 5\nexcept ImportError:\n    H = 6\n"
        "x, (y, z) = 1, (2, 3)\n"
        "def outer():\n    inner = 1\n"
    )
    assert sorted(_assigned(ast.parse(source).body)) == ["A", "B", "C", "D", "E", "E", "G", "H", "K", "f", "outer",
                                                          "x", "y", "z"]


def test_version() -> None:
    assert protoguard.__version__
