"""Hyperparameter rules shared by the detectors: each detector declares a table, one function checks it.

Why: following scikit-learn, hyperparameters are stored as given in ``__init__`` and checked in
``fit``, with an error that names the parameter, its rule and the value. Written by hand in each
detector, the message drifted and the number checks differed (a ``bool`` is an ``int`` in Python;
``numpy.float32`` is not a ``float``); one set of rules keeps them the same everywhere.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...schemas.errors import ConfigError

__all__ = ["Rule", "boolean", "check_params", "int_at_least", "integer", "one_of", "optional", "real_in"]


@dataclass(frozen=True)
class Rule:
    """A predicate on a value and the words that describe it in an error ("an int >= 1")."""

    accepts: Callable[[Any], bool]
    description: str


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer() -> Rule:
    return Rule(_is_int, "an int")


def int_at_least(low: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an int >= {low}")


def real_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> Rule:
    """A real number in an interval; a missing bound is unbounded ("a float > 0", "a float in (0, 1]")."""
    def accepts(v: Any) -> bool:
        if not _is_real(v):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return bool(above and below)

    if high is None:
        description = f"a float {'>' if low_open else '>='} {low:g}" if low is not None else "a float"
    else:
        description = f"a float in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(accepts, description)


def one_of(*choices: str) -> Rule:
    quoted = [repr(c) for c in choices]
    words = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return Rule(lambda v: isinstance(v, str) and v in choices, words)


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "a bool")


def optional(rule: Rule) -> Rule:
    """``rule`` or None; an int rule reads "an int or None" (the random_state idiom)."""
    return Rule(lambda v: v is None or rule.accepts(v), f"{rule.description} or None")


def check_params(estimator: object, rules: Mapping[str, Rule]) -> None:
    """Raise ``ConfigError`` naming the first parameter of ``estimator`` that breaks its rule."""
    name = type(estimator).__name__
    for param, rule in rules.items():
        value = getattr(estimator, param)
        if not rule.accepts(value):
            raise ConfigError(f"The {param!r} parameter of {name} must be {rule.description}. Got {value!r} instead.")
