"""The detectors' shared hyperparameter rules: what each accepts and how an error reads."""
from __future__ import annotations

import numpy as np
import pytest

from protoguard.schemas.errors import ConfigError
from protoguard.trainer.detectors import GaussDetector, HGADDetector, MNPDetector
from protoguard.trainer.detectors.params import (
    boolean,
    check_params,
    int_at_least,
    integer,
    one_of,
    optional,
    real_in,
)


def test_ints_accept_numpy_ints_and_refuse_bools_and_floats() -> None:
    rule = int_at_least(1)
    assert rule.accepts(3) and rule.accepts(np.int64(3))
    assert not rule.accepts(True) and not rule.accepts(2.0) and not rule.accepts(0)
    assert integer().accepts(-5) and not integer().accepts("5")


def test_reals_accept_numpy_floats_and_honour_open_and_closed_bounds() -> None:
    unit_open = real_in(0, 1, high_open=True)
    assert unit_open.accepts(0) and unit_open.accepts(np.float32(0.5)) and not unit_open.accepts(1.0)
    assert unit_open.description == "a float in [0, 1)"
    positive = real_in(0, low_open=True)
    assert positive.description == "a float > 0" and not positive.accepts(0.0) and positive.accepts(1e-9)
    assert not real_in(0).accepts(False) and not real_in(0).accepts("1")


def test_choices_bools_and_optionals_describe_themselves() -> None:
    assert one_of("a", "b", "c").description == "'a', 'b' or 'c'"
    assert not one_of("a").accepts(None)
    assert boolean().accepts(False) and not boolean().accepts(0)
    maybe = optional(int_at_least(1))
    assert maybe.accepts(None) and maybe.description == "an int >= 1 or None"


def test_the_first_broken_rule_is_named_with_its_value() -> None:
    class Estimator:
        alpha, beta = 0.5, -1

    with pytest.raises(ConfigError, match=r"^The 'beta' parameter of Estimator must be an int >= 0\. Got -1 instead\.$"):
        check_params(Estimator(), {"alpha": real_in(0, 1), "beta": int_at_least(0)})


@pytest.mark.parametrize(("detector", "param", "words"), [
    (MNPDetector(n_members=True), "n_members", "an int >= 1"),
    (MNPDetector(single_label_members=0), "single_label_members", "an int >= 1 or None"),
    (MNPDetector(validation="holdout"), "validation", "'reference', 'frugal' or 'fixed_epochs'"),
    (HGADDetector(label_smoothing=1.0), "label_smoothing", r"a float in \[0, 1\)"),
    (HGADDetector(use_mi=1), "use_mi", "a bool"),
    (GaussDetector(random_state=1.5), "random_state", "an int or None"),
])
def test_each_detector_checks_its_table_before_fitting(detector: object, param: str, words: str) -> None:
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = np.zeros(40, dtype=np.int64)
    y[:2] = 1
    with pytest.raises(ConfigError, match=f"'{param}' parameter of {type(detector).__name__} must be {words}"):
        detector.fit(X, y)  # type: ignore[attr-defined]
