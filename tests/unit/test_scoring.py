"""score_batch + build_alerts: every row scored, only the rows over threshold explained.

The contract under test: the alerts are the ones (and carry the content) that explaining the
whole batch gave, while the detector's ``explain`` sees the alert rows only.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
import torch

from protoguard.schemas.manifest import ModelManifest
from protoguard.stream.alerting import build_alerts
from protoguard.stream.decode import DecodedBatch
from protoguard.stream.scoring import ScoredBatch, score_batch
from protoguard.trainer.detectors import HGADDetector
from protoguard.trainer.detectors.mnp import MNPDetector

torch.set_num_threads(1)

N_FEATURES = 6
CLASSES = ("disk", "net", "cpu")


class RecordingDetector:
    """A real detector whose ``explain`` calls are counted (which rows the scorer asked about)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.explained_rows: list[int] = []

    def score_rows(self, X: np.ndarray, classes: Any = None) -> np.ndarray:
        return self.detector.score_rows(X, classes)

    def explain_rows(self, X: np.ndarray, classes: Any = None, **kwargs: Any) -> Any:
        self.explained_rows.append(len(X))
        return self.detector.explain_rows(X, classes, **kwargs)


def _decoded(X: np.ndarray, kinds: list[str | None] | None = None) -> DecodedBatch:
    n = len(X)
    return DecodedBatch(
        indices=np.arange(n, dtype=np.int64), event_ids=[f"e{i}" for i in range(n)],
        entities=[f"host{i % 7}" for i in range(n)],
        timestamps=[datetime(2024, 1, 1, tzinfo=timezone.utc)] * n,
        kinds=kinds if kinds is not None else [None] * n, X=X,
    )


@pytest.fixture(scope="module")
def mnp() -> tuple[MNPDetector, ModelManifest, np.ndarray]:
    """A tiny 3-member MNP, its manifest with a threshold that makes ~3 % of a batch alert, the batch."""
    rng = np.random.default_rng(0)
    normal = rng.normal(0.4, 0.05, (500, N_FEATURES)).astype(np.float32)
    anomalies = rng.normal(0.8, 0.05, (20, N_FEATURES)).astype(np.float32)
    X = np.vstack([normal, anomalies])
    y = np.zeros(len(X), np.int64)
    y[-4:] = 1
    det = MNPDetector(n_prototypes=2, n_members=3, n_batches_per_epoch=8, max_epochs=3, pretrain_max_epochs=2,
                      validation="fixed_epochs", random_state=0).fit(X, y, feature_names=[f"f{i}" for i in range(N_FEATURES)])
    batch = np.vstack([rng.normal(0.4, 0.05, (388, N_FEATURES)), rng.normal(0.8, 0.05, (12, N_FEATURES))]).astype(np.float32)
    batch = batch[rng.permutation(len(batch))]
    _, manifest = det.save()
    threshold = float(np.quantile(det.score(batch), 0.97))
    return det, manifest.model_copy(update={"threshold": threshold}), batch


def test_mnp_explains_alert_rows_only_and_alerts_match_explaining_everything(mnp) -> None:
    det, manifest, X = mnp
    recording = RecordingDetector(det)
    scored = score_batch(recording, manifest, X, n_top=2)
    scores = det.score(X)
    expected_rows = np.flatnonzero(scores > manifest.threshold)
    assert 5 <= len(expected_rows) < len(X) // 10
    np.testing.assert_array_equal(scored.alert_rows, expected_rows)
    np.testing.assert_array_equal(scored.scores, scores)
    assert recording.explained_rows == [len(expected_rows)]  # one call, alert rows only
    # Non-alert rows get no explanation: every explanation column has one entry per alert row.
    for col in (scored.nearest_prototype, scored.prototype_distance, scored.top_features, scored.top_contributions,
                *scored.components.values()):
        assert col is not None and len(col) == len(expected_rows)
    assert scored.is_alert.sum() == len(expected_rows) and scored.is_alert[expected_rows].all()

    # What the previous scorer put in each alert: the explanation of the whole batch at that row.
    full = det.explain(X, n_top=2)
    rows = expected_rows
    # Rows are independent, so the subset's explanation is the full batch's (to float32 rounding:
    # BLAS blocks the member GEMMs by row count, so the last bit may differ; 6e-8 measured).
    np.testing.assert_allclose(scored.components["network_output"], full.score[rows], rtol=0, atol=1e-6)
    np.testing.assert_allclose(det.explain(X[rows]).score, scores[rows], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scored.nearest_prototype, full.nearest_prototype[rows])
    np.testing.assert_array_equal(scored.top_features, full.top_features[rows])
    np.testing.assert_allclose(scored.top_contributions, full.top_contributions[rows], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scored.components["reconstruction_error"], full.reconstruction_error[rows], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scored.components["prototype_similarity"], full.similarity[rows], rtol=0, atol=1e-6)
    distance = 1.0 / np.clip(full.similarity[rows], 1e-6, None) - 1.0
    np.testing.assert_allclose(scored.prototype_distance, distance, rtol=1e-5, atol=1e-6)

    alerts = build_alerts(_decoded(X), scored, model_version="7", feature_names=manifest.feature_names)
    assert [a.event_id for _, _, a in alerts] == [f"e{r}" for r in rows]
    for (key, value, alert), r, i in zip(alerts, rows, range(len(rows))):
        assert key == f"host{r % 7}".encode() and alert.entity == f"host{r % 7}"
        assert alert.score == float(scores[r]) and alert.score > alert.threshold == pytest.approx(manifest.threshold)
        assert alert.nearest_prototype == int(full.nearest_prototype[r])
        assert alert.prototype_distance == pytest.approx(float(distance[i]), rel=1e-5)
        assert [f.name for f in alert.top_features] == [f"f{j}" for j in full.top_features[r]]
        assert [f.contribution for f in alert.top_features] == pytest.approx(full.top_contributions[r].tolist(), abs=1e-6)
        assert alert.components["network_output"] == alert.score
        assert alert.components["reconstruction_error"] == pytest.approx(float(full.reconstruction_error[r]), abs=1e-6)
        assert b'"top_features"' in value


def test_empty_batch_and_batches_without_alerts(mnp) -> None:
    det, manifest, X = mnp
    empty = score_batch(det, manifest, np.empty((0, N_FEATURES), np.float32))
    assert empty.scores.shape == (0,) and empty.alert_rows is not None and empty.alert_rows.shape == (0,)
    assert build_alerts(_decoded(np.empty((0, N_FEATURES), np.float32)), empty, model_version="7",
                        feature_names=manifest.feature_names) == []
    quiet = score_batch(det, manifest.model_copy(update={"threshold": 1.0}), X)  # phi < 1: nothing alerts
    assert quiet.alert_rows is not None and len(quiet.alert_rows) == 0 and not quiet.is_alert.any()
    assert quiet.top_features is not None and quiet.top_features.shape == (0, 3)
    uncalibrated = score_batch(det, manifest.model_copy(update={"threshold": None}), X)
    assert np.isinf(uncalibrated.thresholds).all() and not uncalibrated.is_alert.any()
    assert build_alerts(_decoded(X), uncalibrated, model_version="7", feature_names=manifest.feature_names) == []


def test_scored_batch_refuses_per_row_explanation_columns() -> None:
    """A caller still building per-row columns would attach explanations to the wrong events."""
    scores = np.array([0.1, 0.9, 0.2], np.float32)
    thresholds = np.full(3, 0.5, np.float32)
    ok = ScoredBatch(scores=scores, thresholds=thresholds, nearest_prototype=np.array([4]))
    np.testing.assert_array_equal(ok.alert_rows, [1])
    with pytest.raises(ValueError, match="one per alert row"):
        ScoredBatch(scores=scores, thresholds=thresholds, nearest_prototype=np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="components"):
        ScoredBatch(scores=scores, thresholds=thresholds, components={"x": np.zeros(3, np.float32)})


def test_a_non_finite_score_is_an_alert_never_a_silent_miss() -> None:
    scores = np.array([np.nan, 0.9, 0.1, np.inf, -np.inf], np.float32)
    scored = ScoredBatch(scores=scores, thresholds=np.full(5, 0.5, np.float32))
    np.testing.assert_array_equal(scored.alert_rows, [0, 1, 3, 4])


# ----------------------------------------------------------------------------- HGAD
@pytest.fixture(scope="module")
def hgad() -> tuple[HGADDetector, ModelManifest]:
    rng = np.random.default_rng(0)
    parts, labels = [], []
    for c, name in enumerate(CLASSES):
        mixing = rng.normal(0, 1, (5, 5)) * 0.5 + np.eye(5)
        parts.append(rng.normal(0, 1, (200, 5)) @ mixing + 3.0 * c)
        labels += [name] * 200
    det = HGADDetector(n_blocks=2, n_intra_centres=2, n_epochs=4, batch_size=256, threshold_quantile=0.95,
                       device="cpu", random_state=0).fit(np.concatenate(parts).astype(np.float32), np.array(labels))
    return det, det.save()[1]


def test_hgad_alerts_with_per_class_thresholds_and_explains_alert_rows_only(hgad) -> None:
    det, manifest = hgad
    assert len(set(det.thresholds_.values())) == 3  # per-class thresholds really differ
    rng = np.random.default_rng(1)
    # Normal rows of each class, some claimed as another class (spoofed kind), some with no kind,
    # and a few far-out rows: per-class thresholds decide, then only those rows are explained.
    X = np.concatenate([rng.normal(0, 1, (60, 5)) + 3.0 * c for c in range(3)] + [rng.normal(12, 1, (4, 5))]).astype(np.float32)
    kinds: list[str | None] = [CLASSES[i // 60] for i in range(180)] + ["disk", "net", None, "unseen"]
    kinds[5], kinds[70], kinds[130] = "cpu", "disk", None
    recording = RecordingDetector(det)
    scored = score_batch(recording, manifest, X, kinds)
    full = det.explain(X, classes=kinds)
    np.testing.assert_array_equal(scored.thresholds, full.threshold)
    assert len(np.unique(scored.thresholds)) == 4  # three classes + the class-agnostic threshold
    np.testing.assert_array_equal(scored.scores, full.score)
    rows = np.flatnonzero(full.score > full.threshold)
    np.testing.assert_array_equal(scored.alert_rows, rows)
    assert {5, 70, 180, 181, 182, 183} <= set(rows.tolist()) and len(rows) < len(X) // 4
    assert recording.explained_rows == [len(rows)]
    np.testing.assert_array_equal(scored.components["class_nll"], full.score[rows])
    np.testing.assert_allclose(scored.components["claimed_vs_best_gap"], np.nan_to_num(full.claimed_vs_best_gap[rows]),
                               rtol=0, atol=1e-5)
    # explain on the alert rows alone scores them as the whole batch did (rows are independent).
    np.testing.assert_allclose(det.explain(X[rows], classes=[kinds[r] for r in rows]).score, full.score[rows], rtol=1e-6)
    alerts = build_alerts(_decoded(X, kinds), scored, model_version="3", feature_names=manifest.feature_names)
    assert [a.event_id for _, _, a in alerts] == [f"e{r}" for r in rows]
    for (_, _, alert), r in zip(alerts, rows):
        assert alert.threshold == float(full.threshold[r]) and alert.score > alert.threshold
        assert alert.nearest_prototype is None and alert.top_features == []
        assert set(alert.components) == {"class_nll", "claimed_vs_best_gap"}

    calm = np.setdiff1d(np.arange(len(X)), rows)[:10]  # no alert among them: explain is not called
    recording.explained_rows.clear()
    quiet = score_batch(recording, manifest, X[calm], [kinds[r] for r in calm])
    # explain_rows is asked about zero rows: no forward pass, the columns keep their shapes.
    assert quiet.alert_rows is not None and len(quiet.alert_rows) == 0 and recording.explained_rows == [0]
    assert quiet.components["claimed_vs_best_gap"].shape == (0,)


def test_events_far_outside_the_training_range_alert_whatever_the_network_says() -> None:
    from protoguard.schemas.manifest import ScalerStats
    from protoguard.stream.scoring import OUT_OF_RANGE, out_of_range

    manifest = ModelManifest(detector="mnp", feature_names=["a", "b"], threshold=0.5,
                             scaler=ScalerStats(kind="minmax", offset=[0.0, 10.0], scale=[2.0, 1.0]))
    X = np.array([[1.0, 10.5], [500.0, 10.0], [1.0, -1e30], [1.0, 110.0]], np.float32)
    beyond = out_of_range(manifest, X, spans=100.0)
    assert beyond[0] == 0 and beyond[1] > 100 and beyond[2] > 1e28 and beyond[3] == 0  # 99 spans: inside
    assert not out_of_range(manifest, X, spans=0).any()

    class Calm:  # a network that calls everything normal, as MNP's can on inputs it never saw
        def score_rows(self, X: np.ndarray, kinds: Any) -> np.ndarray:
            return np.zeros(len(X), np.float32)

        def explain_rows(self, X: np.ndarray, kinds: Any, n_top: int = 3) -> Any:
            from protoguard.trainer.detectors.explanation import Explanation
            return Explanation(score=np.zeros(len(X), np.float32), score_name="network_output")

    scored = score_batch(Calm(), manifest, X, out_of_range_spans=100.0)
    np.testing.assert_array_equal(scored.alert_rows, [1, 2])
    assert scored.components[OUT_OF_RANGE].tolist()[0] > 100
