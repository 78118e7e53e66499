"""HGAD end to end on the real stack: a class-aware model served, class-swapped events alerted,
labels -> retrain of the *HGAD* champion -> gate -> promotion -> the scorer serves the new version."""
from __future__ import annotations

import signal
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from protoguard.stream.clients import build_producer
from protoguard.stream.replay import encode_events
from protoguard.trainer.detectors import HGADDetector
from tests.fixtures.pipeline import FEATURES, N_FEATURES, Pipeline, alerts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # about a minute

KINDS = ("disk", "net", "cpu")
#: a fit of a few seconds on one thread: enough to exercise the loop, not a quality claim
_TINY_HGAD = {"n_blocks": 4, "n_intra_centres": 2, "n_epochs": 15, "batch_size": 256, "threshold_quantile": 0.99,
              "device": "cpu", "random_state": 0}
_TRAINER_ENV = {"PROTOGUARD_TRAINER__MIN_NEW_LABELS": "100", "PROTOGUARD_TRAINER__GATE_MIN_LABELS": "5",
                "PROTOGUARD_TRAINER__LABEL_CHECK_S": "0.5", "PROTOGUARD_TRAINER__INTERVAL_S": "86400",
                "PROTOGUARD_TRAINER__RANDOM_STATE": "0", "PROTOGUARD_TRAINER__LOCK_TIMEOUT_S": "60",
                "PROTOGUARD_STREAM__RESERVOIR_SIZE": "3000"}


def class_traffic(n: int, seed: int, *, swap_share: float, genuine_share: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Rows, claimed kinds and a row type: 0 normal, 1 class-swapped (normal for another kind), 2 genuine anomaly.

    The three kinds' distributions are fixed (seed 7); swapped rows are drawn from one kind and claim
    the next; genuine anomalies are their kind's rows pushed 3 units off in every feature.
    """
    centres = np.random.default_rng(7).normal(0, 3, size=(len(KINDS), N_FEATURES))
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, len(KINDS), n)
    X = centres[kind] + rng.normal(0, 0.5, size=(n, N_FEATURES))
    u = rng.random(n)
    row_type = np.where(u < swap_share, 1, np.where(u < swap_share + genuine_share, 2, 0))
    X[row_type == 2] += 3.0 * np.sign(rng.normal(size=(int((row_type == 2).sum()), N_FEATURES)))
    claimed = np.where(row_type == 1, (kind + 1) % len(KINDS), kind)
    return X.astype(np.float32), [KINDS[k] for k in claimed], row_type


def _produce(p: Pipeline, X: np.ndarray, kinds: list[str], *, start: int) -> list[str]:
    producer = build_producer(p.stack.bootstrap_servers, linger_ms=20)
    ids = []
    for key, value, event_id in encode_events(X, FEATURES, id_prefix="h", start=start, kinds=kinds):
        producer.send(p.events, key=key, value=value)
        ids.append(event_id)
    producer.flush()
    producer.close()
    return ids


def _alerted(p: Pipeline, first: int, expect_at_least: int) -> dict[int, dict]:
    """Alerts of events numbered >= ``first``; waits for ``expect_at_least`` alerts on the topic in all
    (drain stops after 3 quiet seconds, which a consumer's first group join can take on its own)."""
    alerts = alerts_of(p.drain(p.alerts, expect_at_least=expect_at_least))
    return {int(a["event_id"].rsplit("-", 1)[1]): a for a in alerts if int(a["event_id"].rsplit("-", 1)[1]) >= first}


def test_hgad_serves_alerts_on_class_swaps_and_is_retrained_through_the_gate(pipeline: Pipeline, tmp_path) -> None:
    X_train, kinds_train, type_train = class_traffic(3000, seed=1, swap_share=0.0, genuine_share=0.0)
    det = HGADDetector(**_TINY_HGAD).fit(X_train, kinds_train, feature_names=FEATURES)
    weights, manifest = det.save()
    registry = pipeline.registry()
    v1 = registry.register(weights, manifest, note="first hgad")
    registry.promote(v1)

    # 1. The scorer serves HGAD: class-swapped and genuine anomalies alert, normals mostly do not.
    # Genuine anomalies are rare (1 %): the retrain's threshold alerts the trainer's budget (2 %) of
    # the reservoir's *class-agnostic* scores (the reservoir keeps no kinds, see trainer/refit.py), so
    # anomalies beyond the budget would lift it above what class swaps score under their claimed kind.
    X, kinds, row_type = class_traffic(3000, seed=2, swap_share=0.05, genuine_share=0.01)
    scorer = pipeline.start_scorer(idle_exit_s=None, log=tmp_path / "scorer.log")
    ids = _produce(pipeline, X, kinds, start=0)
    pipeline.wait_scored(len(X))
    alerted = _alerted(pipeline, 0, expect_at_least=int(0.9 * (row_type > 0).sum()))
    is_alert = np.array([i in alerted for i in range(len(X))])
    assert is_alert[row_type == 1].mean() > 0.9, "class-swapped events must alert"
    assert is_alert[row_type == 2].mean() > 0.9
    assert is_alert[row_type == 0].mean() < 0.05
    swap_alert = alerted[int(np.flatnonzero(row_type == 1)[0])]
    assert swap_alert["model_version"] == v1 and swap_alert["components"]["claimed_vs_best_gap"] > 0
    assert set(swap_alert["components"]) == {"class_nll", "claimed_vs_best_gap"}

    # 2. Analysts label swaps and genuine anomalies as anomalies and some quiet events as normal.
    rng = np.random.default_rng(3)
    chosen = np.concatenate([np.flatnonzero(row_type == 1)[:60], np.flatnonzero(row_type == 2)[:25],
                             rng.choice(np.flatnonzero((row_type == 0) & ~is_alert), 60, replace=False)])
    now = datetime.now(UTC).isoformat()
    producer = build_producer(pipeline.stack.bootstrap_servers)
    for i in chosen:
        producer.send(pipeline.labels, value=orjson.dumps({"event_id": ids[i], "label": "normal" if row_type[i] == 0 else "anomaly",
                                                           "analyst": "ana", "ts": now}))
    producer.flush()
    producer.close()
    labeller = pipeline.start_process(["labels", "--exit-when-idle-s", "4"], log=tmp_path / "labels.log")
    assert labeller.wait(timeout=120) == 0, pipeline.process_report()

    # 3. The trainer retrains the HGAD champion (an HGAD candidate), gates it and promotes it.
    trainer = pipeline.start_process(["trainer"], log=tmp_path / "trainer.log", env=_TRAINER_ENV)
    pipeline.wait_until(lambda: len(registry.versions()) >= 2, 240, "a retrained candidate")
    v2 = max((info.version for info in registry.versions()), key=int)
    candidate = registry.manifest(v2)
    assert candidate.detector == "hgad" and candidate.parent_version == v1
    assert candidate.training_summary["classes"] == sorted(KINDS)
    assert candidate.metrics["gate"]["decision"] == "promote", candidate.metrics["gate"]
    pipeline.wait_until(lambda: registry.current_version() == v2, 30, "the promotion")
    # The scorer swaps models between batches (pub/sub, or polling every 0.5 s) and says so in its log.
    scorer_log = tmp_path / "scorer.log"
    pipeline.wait_until(lambda: f"serving model version {v2} " in scorer_log.read_text(errors="replace"), 60,
                        f"the scorer to serve model {v2}")

    # 4. The scorer picks up the promoted HGAD and alerts on new class swaps with it.
    X2, kinds2, type2 = class_traffic(1200, seed=4, swap_share=0.1, genuine_share=0.0)
    _produce(pipeline, X2, kinds2, start=len(X))
    pipeline.wait_scored(len(X) + len(X2))
    later = _alerted(pipeline, len(X), expect_at_least=len(alerted) + int(0.9 * (type2 == 1).sum()))
    swaps = [len(X) + i for i in np.flatnonzero(type2 == 1)]
    assert np.mean([i in later for i in swaps]) > 0.9
    assert {later[i]["model_version"] for i in swaps if i in later} == {v2}
    normals = [len(X) + i for i in np.flatnonzero(type2 == 0)]
    assert np.mean([i in later for i in normals]) < 0.1
    for proc in (trainer, scorer):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, pipeline.process_report()
