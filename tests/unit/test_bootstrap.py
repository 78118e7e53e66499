"""trainer/bootstrap.py: bootstrap_model calibrates a detector on reference rows, packages its weights and a
finalised manifest, and with a registry registers it and promotes as told ("always", "if_first", "never").
The detector and the registry are small stand-ins; the registry's Redis side is in tests/integration."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from protoguard.schemas.manifest import ModelManifest
from protoguard.trainer.bootstrap import bootstrap_model

NAMES = ["bytes_in", "bytes_out", "duration"]
WEIGHTS = b"\x00weights\xff" * 10


class Detector:
    """Scores a row by its sum; saves fixed bytes and the manifest a real detector would."""

    def __init__(self) -> None:
        self.scored: list[npt.NDArray[np.float32]] = []

    def score(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.scored.append(X)
        return X.sum(axis=1).astype(np.float32)

    def save(self) -> tuple[bytes, ModelManifest]:
        return WEIGHTS, ModelManifest(detector="gauss", feature_names=NAMES, params={"n_components": 2},
                                      training_summary={"classes": ["normal"], "n_unlabelled": 0},
                                      weights_sha256=hashlib.sha256(WEIGHTS).hexdigest())


class Registry:
    """Records calls in order; ``current`` is the version served before this bootstrap."""

    def __init__(self, current: str | None) -> None:
        self.current, self.calls = current, list[tuple[Any, ...]]()

    def register(self, weights: bytes, manifest: ModelManifest, *, note: str = "") -> str:
        self.calls.append(("register", weights, manifest, note))
        return "v7"

    def current_version(self) -> str | None:
        return self.current

    def promote(self, version: str, *, reason: str = "manual") -> str | None:
        self.calls.append(("promote", version, reason))
        return self.current


@pytest.fixture
def X() -> npt.NDArray[np.float32]:
    return np.random.default_rng(3).normal(size=(1000, 3)).astype(np.float32)


@pytest.mark.parametrize("budget", [0.02, 0.05, 0.1])
def test_the_threshold_puts_exactly_the_budget_share_of_reference_rows_above_it(
        X: npt.NDArray[np.float32], budget: float) -> None:
    detector = Detector()
    model = bootstrap_model(detector, X, alert_budget=budget)
    assert len(detector.scored) == 1 and detector.scored[0] is X
    assert int((X.sum(axis=1) > model.threshold).sum()) == round(budget * len(X))


def test_without_a_registry_the_model_is_packaged_only(X: npt.NDArray[np.float32]) -> None:
    model = bootstrap_model(Detector(), X, alert_budget=0.02, summary={"n_unlabelled": 1000, "source": "test"})
    assert model.weights == WEIGHTS and model.version is None and model.promoted is False
    manifest = model.manifest
    assert manifest.threshold == model.threshold and isinstance(model.threshold, float)
    assert (manifest.calibration.method, manifest.calibration.target, manifest.calibration.n_samples) == (
        "alert_budget", 0.02, 1000)
    assert manifest.training_summary == {"classes": ["normal"], "n_unlabelled": 1000, "source": "test"}
    assert manifest.params == {"n_components": 2} and manifest.weights_sha256 == hashlib.sha256(WEIGHTS).hexdigest()


def test_the_registry_gets_the_weights_and_the_calibrated_manifest_with_the_note(X: npt.NDArray[np.float32]) -> None:
    registry = Registry(current=None)
    model = bootstrap_model(Detector(), X, alert_budget=0.02, registry=registry, note="initial fit",  # type: ignore[arg-type]
                            reason="bootstrap")
    assert registry.calls == [("register", WEIGHTS, model.manifest, "initial fit"), ("promote", "v7", "bootstrap")]
    assert registry.calls[0][2].threshold == model.threshold  # registered after calibration, never before
    assert model.version == "v7" and model.promoted is True


@pytest.mark.parametrize(("promote", "current", "promoted"), [
    ("always", None, True), ("always", "v1", True),
    ("if_first", None, True), ("if_first", "v1", False),  # a later manual fit waits for `model promote`
    ("never", None, False), ("never", "v1", False),
])
def test_promotion_follows_the_promote_setting(X: npt.NDArray[np.float32], promote: Any, current: str | None,
                                               promoted: bool) -> None:
    registry = Registry(current=current)
    model = bootstrap_model(Detector(), X, alert_budget=0.02, registry=registry, promote=promote)  # type: ignore[arg-type]
    assert model.version == "v7" and model.promoted is promoted
    assert [call[0] for call in registry.calls] == (["register", "promote"] if promoted else ["register"])
    if promoted:
        assert registry.calls[1] == ("promote", "v7", "first model")  # the default reason
