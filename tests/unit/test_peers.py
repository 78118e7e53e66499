"""Each peer ranks a planted anomaly cluster above the normal data (a real AUC floor on seeded data)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from protoguard.benchmarks import peers
from protoguard.benchmarks.peers import FEAWAD, DeepSAD, DevNet, HGBPeer, IsolationForestPeer, PReNet, RoSAS
from protoguard.schemas.errors import NotFittedError

#: Short trainings: the planted cluster is easy, and the whole file must stay within a few seconds.
_FAST = {"n_epochs": 6, "n_steps_per_epoch": 10, "batch_size": 128}

PEERS: dict[str, Any] = {
    "devnet": lambda seed: DevNet(**_FAST, random_state=seed),
    "deepsad": lambda seed: DeepSAD(**_FAST, random_state=seed),
    # targets up to 8 take PReNet's regression a few more steps than the others need
    "prenet": lambda seed: PReNet(**{**_FAST, "n_epochs": 20}, random_state=seed),
    "feawad": lambda seed: FEAWAD(**_FAST, n_pretrain_epochs=3, random_state=seed),
    "rosas": lambda seed: RoSAS(**_FAST, random_state=seed),
    "iforest": lambda seed: IsolationForestPeer(random_state=seed),
    "hgb": lambda seed: HGBPeer(random_state=seed),
}


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two normal blobs plus an off-manifold anomaly cluster; 3 of the 30 training anomalies labelled."""
    rng = np.random.default_rng(seed)
    d = 6

    def normals(n: int) -> np.ndarray:
        centres = np.where(rng.random((n, 1)) < 0.5, 0.3, 0.6)
        return rng.normal(0, 0.05, (n, d)) + centres

    def anomalies(n: int) -> np.ndarray:
        return rng.normal(0, 0.05, (n, d)) + np.r_[0.9, 0.1, 0.9, 0.1, 0.9, 0.1]

    X_train = np.vstack([normals(600), anomalies(30)]).astype(np.float32)
    semi = np.r_[np.zeros(600), np.ones(3), np.zeros(27)].astype(np.int64)
    X_test = np.vstack([normals(300), anomalies(20)]).astype(np.float32)
    y_test = np.r_[np.zeros(300), np.ones(20)]
    return X_train, semi, X_test, y_test, semi.copy()


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_scores_planted_anomalies_higher(name: str) -> None:
    X_train, semi, X_test, y_test, _ = _planted()
    X_before = X_train.copy()
    model = PEERS[name](0)
    assert model.fit(X_train, semi) is model
    scores = model.score(X_test)
    assert scores.shape == (len(X_test),) and np.all(np.isfinite(scores))
    assert roc_auc_score(y_test, scores) > 0.95
    np.testing.assert_array_equal(X_train, X_before)


@pytest.mark.parametrize("name", ["devnet", "rosas"])
def test_torch_peer_is_reproducible(name: str) -> None:
    X_train, semi, X_test, *_ = _planted()
    first = PEERS[name](7).fit(X_train, semi).score(X_test)
    second = PEERS[name](7).fit(X_train, semi).score(X_test)
    np.testing.assert_allclose(first, second)


def test_peer_with_a_single_labelled_anomaly() -> None:
    """PReNet's a-a pair is then the anomaly with itself (DeepOD's version crashes here)."""
    X_train, semi, X_test, y_test, _ = _planted()
    semi[601:603] = 0
    assert roc_auc_score(y_test, PEERS["prenet"](0).fit(X_train, semi).score(X_test)) > 0.9


def test_peer_needs_a_labelled_anomaly() -> None:
    X_train, semi, *_ = _planted()
    with pytest.raises(ValueError, match="at least one labelled anomaly"):
        DevNet(**_FAST).fit(X_train, np.zeros_like(semi))


def test_score_before_fit_says_what_to_do() -> None:
    with pytest.raises(NotFittedError, match="Call fit"):
        DeepSAD().score(np.zeros((2, 3), dtype=np.float32))


def test_fit_time_cap_stops_training_early() -> None:
    X_train, semi, *_ = _planted()
    model = DevNet(n_epochs=1000, n_steps_per_epoch=10, batch_size=64, max_fit_s=0.0, random_state=0).fit(X_train, semi)
    assert model.n_steps_done_ == 1


def test_all_is_sorted_and_complete() -> None:
    assert list(peers.__all__) == sorted(peers.__all__)
    assert all(hasattr(peers, name) for name in peers.__all__)
