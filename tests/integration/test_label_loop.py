"""The label loop on the real stack: labels -> label store -> retrain -> gate -> promotion -> scorer."""
from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from protoguard.schemas.settings import TrainerSettings
from protoguard.stream.clients import build_producer, build_redis
from protoguard.trainer.bootstrap import bootstrap_model
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.retraining import Retrainer, RetrainStores
from protoguard.trainer.store import LabelStore, TrafficReservoir
from protoguard.trainer.training import TrainingData, fit_mnp
from tests.fixtures.pipeline import FEATURES, N_FEATURES, Pipeline, alerts_of

pytestmark = pytest.mark.integration

#: a fit of a few seconds: enough to exercise the loop, not a quality claim
_FAST = {"PROTOGUARD_TRAINER__N_EPOCHS": "10", "PROTOGUARD_TRAINER__GATE_MIN_LABELS": "5",
         "PROTOGUARD_TRAINER__LABEL_CHECK_S": "0.5", "PROTOGUARD_TRAINER__INTERVAL_S": "86400",
         "PROTOGUARD_TRAINER__RANDOM_STATE": "0", "PROTOGUARD_STREAM__RESERVOIR_SIZE": "3000",
         "PROTOGUARD_TRAINER__LOCK_TIMEOUT_S": "30"}
_FAST_PARAMS = {"n_batches_per_epoch": 8, "n_prototypes": 3, "device": "cpu"}
#: the trainer's CLI arguments where a test counts its label checks: APScheduler logs each job run
#: at INFO, which the CLI lets through only at DEBUG (it quiets the apscheduler logger otherwise).
#: The later --log-level wins over the INFO that Pipeline.start_process passes first.
_TRAINER_COUNTING_CHECKS = ["--log-level", "DEBUG", "trainer"]


def hidden_anomaly_traffic(n: int, seed: int, anomaly_share: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Three normal modes; anomalies sit 1.5 sigma-units off a mode in every feature, close enough
    that an almost unsupervised model misses most of them and labels make a measurable difference."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(3, N_FEATURES))
    y = (rng.random(n) < anomaly_share).astype(np.int64)
    X = centres[rng.integers(0, 3, n)] + rng.normal(0, 0.5, size=(n, N_FEATURES))
    X[y == 1] += 1.5 * np.sign(rng.normal(size=(int(y.sum()), N_FEATURES)))
    return X.astype(np.float32), y


def _first_model(p: Pipeline, X: np.ndarray, y: np.ndarray, n_labelled: int, n_epochs: int = 2) -> str:
    """A first model from ``n_labelled`` labelled anomalies (few labels and epochs make it weak)."""
    labelled = np.flatnonzero(y == 1)[:n_labelled]
    rest = np.setdiff1d(np.arange(len(X)), labelled)
    det = fit_mnp(TrainingData(X_unlabelled=X[rest], X_anomalies=X[labelled], X_normals=X[:0], feature_names=FEATURES),
                  params={"max_epochs": n_epochs, "pretrain_max_epochs": n_epochs, "validation": "fixed_epochs",
                          **_FAST_PARAMS}, random_state=0)
    version = bootstrap_model(det, X[rest], alert_budget=0.05, summary={"first": True}, registry=p.registry(),
                              promote="always").version
    assert version is not None
    return version


def _label_messages(ids: list[str], y: np.ndarray) -> list[bytes]:
    now = datetime.now(UTC).isoformat()
    return [orjson.dumps({"event_id": e, "label": "anomaly" if v else "normal", "analyst": "ana", "ts": now})
            for e, v in zip(ids, y)]


def _send(p: Pipeline, topic: str, values: list[bytes]) -> None:
    producer = build_producer(p.stack.bootstrap_servers)
    for value in values:
        producer.send(topic, value=value)
    producer.flush()
    producer.close()


def _label_checks(log: Path) -> int:
    """How many label checks (the ``label_check_s`` interval job) this trainer has finished, from its
    log. A check that starts a retrain finishes only when the retrain has."""
    every = f"interval[{timedelta(seconds=float(_FAST['PROTOGUARD_TRAINER__LABEL_CHECK_S']))}]"
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if every in line and "executed successfully" in line)


def _wait_for_label_checks(p: Pipeline, logs: list[Path], n: int = 3, timeout_s: float = 120) -> None:
    """Wait until every trainer has finished ``n`` more label checks than it had now."""
    since = [_label_checks(log) for log in logs]
    p.wait_until(lambda: all(_label_checks(log) >= s + n for log, s in zip(logs, since)), timeout_s,
                 f"{n} more label checks by each trainer")


def _seed_stores(p: Pipeline, X: np.ndarray, ids: list[str], labels_y: np.ndarray, labelled: np.ndarray) -> None:
    """Fill the reservoir and the label store directly (what the scorer and label worker would write)."""
    client = build_redis(p.stack.redis_url)
    pipe = client.pipeline(transaction=False)
    TrafficReservoir(client, prefix=p.prefix, capacity=3000).queue_offer(pipe, ids, X, np.random.default_rng(0))
    pipe.execute()
    store = LabelStore(client, prefix=p.prefix)
    metas = [orjson.dumps({"label": "anomaly" if labels_y[i] else "normal", "n": int(i)}) for i in labelled]
    store.apply([ids[i] for i in labelled], metas, X[labelled])


@pytest.mark.slow  # about 70 s on the 2-core CI machine
def test_labels_trigger_a_retrain_whose_promotion_the_scorer_serves(pipeline: Pipeline, tmp_path) -> None:
    X, y = hidden_anomaly_traffic(6000, seed=21)
    v1 = _first_model(pipeline, X[:2000], y[:2000], n_labelled=2)
    scorer = pipeline.start_scorer(idle_exit_s=None, log=tmp_path / "scorer.log")
    ids, _ = pipeline.produce(X[:4000])
    pipeline.wait_scored(4000)

    anomalies = np.flatnonzero(y[:4000] == 1)[:40]
    normals = np.flatnonzero(y[:4000] == 0)[:40]
    chosen = np.concatenate([anomalies, normals])
    messages = _label_messages([ids[i] for i in chosen], y[chosen])
    messages.append(orjson.dumps({"event_id": "never-seen", "label": "anomaly", "analyst": "ana",
                                  "ts": datetime.now(UTC).isoformat()}))
    messages.append(b'{"event_id": "x", "label": "maybe"}')
    messages += messages[:5]  # a redelivered duplicate changes nothing
    _send(pipeline, pipeline.labels, messages)
    labeller = pipeline.start_process(["labels", "--exit-when-idle-s", "4"], log=tmp_path / "labels.log")
    assert labeller.wait(timeout=120) == 0, pipeline.process_report()

    store = LabelStore(build_redis(pipeline.stack.redis_url), prefix=pipeline.prefix)
    assert store.n_new() == len(chosen)
    dead = [orjson.loads(r.value) for r in pipeline.drain(pipeline.dlq, expect_at_least=2)]
    assert sorted(d["stage"] for d in dead) == ["label-join", "validate"]
    assert "never-seen" in next(d["error_message"] for d in dead if d["stage"] == "label-join")

    trainer = pipeline.start_process(["trainer"], log=tmp_path / "trainer.log",
                                     env={**_FAST, "PROTOGUARD_TRAINER__MIN_NEW_LABELS": "50"})
    registry = pipeline.registry()
    pipeline.wait_until(lambda: registry.current_version() != v1, 180, "a promoted retrain")
    v2 = registry.current_version()
    manifest = registry.manifest(v2)
    assert manifest.parent_version == v1
    assert manifest.metrics["gate"]["decision"] == "promote"
    assert manifest.training_summary["n_labelled_anomalies"] + manifest.training_summary["n_confirmed_normals"] \
        + manifest.training_summary["n_held_back"] == len(chosen)
    assert store.n_new() == 0

    # Promotion is published after the pointer flips; wait until the scorer says it serves v2, so
    # every event produced from here on must carry v2.
    scorer_log = tmp_path / "scorer.log"
    pipeline.wait_until(lambda: f"serving model version {v2} " in scorer_log.read_text(errors="replace"), 60,
                        f"the scorer to serve model {v2}")
    later, _ = pipeline.produce(X[4000:], start=4000)
    pipeline.wait_scored(6000)
    alerts = [a for a in alerts_of(pipeline.drain(pipeline.alerts)) if int(a["event_id"].rsplit("-", 1)[1]) >= 4000]
    assert alerts and {a["model_version"] for a in alerts} == {v2}
    for proc in (trainer, scorer):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, pipeline.process_report()


def test_a_candidate_trained_on_flipped_labels_is_rejected(pipeline: Pipeline) -> None:
    X, y = hidden_anomaly_traffic(4000, seed=22)
    v1 = _first_model(pipeline, X, y, n_labelled=40, n_epochs=10)  # a good champion
    ids = [f"e{i}" for i in range(len(X))]
    labelled = np.concatenate([np.flatnonzero(y == 1)[:60], np.flatnonzero(y == 0)[:60]])
    _seed_stores(pipeline, X, ids, y, labelled)
    client = build_redis(pipeline.stack.redis_url)
    stores = RetrainStores(client=client, labels=LabelStore(client, prefix=pipeline.prefix),
                           reservoir=TrafficReservoir(client, prefix=pipeline.prefix, capacity=3000),
                           registry=pipeline.registry())
    settings = TrainerSettings(n_epochs=10, gate_min_labels=5, random_state=0, warm_start=False)
    retrainer = Retrainer(stores, settings, mnp_params=_FAST_PARAMS)

    train, held = stores.labels.snapshot(len(FEATURES)).split(settings.holdout_fraction)
    _, pool = stores.reservoir.sample(len(FEATURES))
    flipped = fit_mnp(TrainingData(X_unlabelled=pool, X_anomalies=train.X[train.y == 0], X_normals=train.X[train.y == 1],
                                   feature_names=FEATURES),
                      params={**retrainer.mnp_params, **_FAST_PARAMS}, random_state=0)
    registry = stores.registry
    champion = MNPDetector.load(*registry.load(v1))
    bad = retrainer.consider(flipped, champion=champion, champion_version=v1, trigger="test", X_traffic=pool,
                             held_y=held.y, held_X=held.X, summary={"flipped": True})
    assert bad.decision == "rejected", bad
    assert registry.status(bad.version)[0] == "rejected"
    assert registry.current_version() == v1
    gate = registry.manifest(bad.version).metrics["gate"]
    assert gate["decision"] == "reject"
    assert gate["candidate"]["auc_pr"] < gate["champion"]["auc_pr"]


@pytest.mark.slow  # about 70 s on the 2-core CI machine
def test_two_trainers_make_one_retrain_per_trigger(pipeline: Pipeline, tmp_path) -> None:
    X, y = hidden_anomaly_traffic(4000, seed=23)
    _first_model(pipeline, X[:2000], y[:2000], n_labelled=5)
    ids = [f"e{i}" for i in range(len(X))]
    anomalies, normals = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    _seed_stores(pipeline, X, ids, y, np.concatenate([anomalies[:20], normals[:20]]))
    env = {**_FAST, "PROTOGUARD_TRAINER__MIN_NEW_LABELS": "30"}
    logs = [tmp_path / f"trainer{i}.log" for i in range(2)]
    trainers = [pipeline.start_process(_TRAINER_COUNTING_CHECKS, log=log, env=env) for log in logs]
    registry = pipeline.registry()
    pipeline.wait_until(lambda: len(registry.versions()) >= 2, 180, "the first retrain")
    _wait_for_label_checks(pipeline, logs)  # both trainers checked the label count since, and did not retrain
    assert len(registry.versions()) == 2

    client = build_redis(pipeline.stack.redis_url)
    store = LabelStore(client, prefix=pipeline.prefix)
    more = np.concatenate([anomalies[20:40], normals[20:40]])
    store.apply([ids[i] for i in more], [orjson.dumps({"label": "anomaly" if y[i] else "normal"}) for i in more], X[more])
    pipeline.wait_until(lambda: len(registry.versions()) >= 3, 180, "the second retrain")
    _wait_for_label_checks(pipeline, logs)
    assert len(registry.versions()) == 3
    text = "".join(log.read_text() for log in logs)
    assert text.count("retrain starting") == 2  # one run per trigger, whichever trainer took the lock
    for proc in trainers:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, pipeline.process_report()


@pytest.mark.slow  # about 30 s on the 2-core CI machine
def test_an_overdue_schedule_runs_once_at_start_however_many_runs_were_missed(pipeline: Pipeline, tmp_path) -> None:
    X, y = hidden_anomaly_traffic(3000, seed=24)
    _first_model(pipeline, X[:2000], y[:2000], n_labelled=5)
    ids = [f"e{i}" for i in range(len(X))]
    _seed_stores(pipeline, X, ids, y, np.concatenate([np.flatnonzero(y == 1)[:20], np.flatnonzero(y == 0)[:20]]))
    client = build_redis(pipeline.stack.redis_url)
    # the last run was ten hourly intervals ago: ten scheduled runs were missed while no trainer ran.
    # Without catching up, the next run would be an hour away; without coalescing, ten would run now.
    client.set(f"{pipeline.prefix}:trainer:last_run", orjson.dumps({"ts": time.time() - 36_000, "trigger": "schedule"}))
    env = {**_FAST, "PROTOGUARD_TRAINER__INTERVAL_S": "3600", "PROTOGUARD_TRAINER__MIN_NEW_LABELS": "1000"}
    trainer = pipeline.start_process(_TRAINER_COUNTING_CHECKS, log=tmp_path / "trainer.log", env=env)
    registry = pipeline.registry()
    pipeline.wait_until(lambda: len(registry.versions()) >= 2, 120, "the overdue scheduled retrain")
    _wait_for_label_checks(pipeline, [tmp_path / "trainer.log"])  # the scheduler moved on past the overdue run
    assert len(registry.versions()) == 2  # one run for all the missed ones
    last = orjson.loads(client.get(f"{pipeline.prefix}:trainer:last_run"))
    assert last["trigger"] == "schedule" and time.time() - last["ts"] < 60
    trainer.send_signal(signal.SIGTERM)
    assert trainer.wait(timeout=120) == 0, pipeline.process_report()


@pytest.mark.slow  # about 25 s on the 2-core CI machine
def test_targeted_label_flips_raise_the_alarm_and_honest_labels_are_promoted(redis_client, unique) -> None:
    """The poisoned-label benchmark, shrunk: the same UNSW rounds labelled honestly and with 20 % of
    each round's labels flipped (alerted attacks near one seed attack relabelled normal) after an
    honest first round. The real Retrainer, label store and registry on the stack's Redis."""
    from protoguard.benchmarks.poisoned_labels import Scenario, run_world
    from protoguard.data import bundled_sample
    from protoguard.stream.replay import load_dataset

    dataset = load_dataset(bundled_sample())
    scenario = Scenario(X=dataset.X, y=dataset.y.astype(np.int64), feature_names=list(dataset.feature_names), seed=0,
                        n_train=2000, n_rounds=3, n_round=2000, n_eval=1000, n_epochs=6)
    honest = run_world(redis_client, scenario, poisoned=False, prefix=unique("honest"))
    poisoned = run_world(redis_client, scenario, poisoned=True, prefix=unique("poisoned"))

    assert not any(r["alarm"] for r in honest)
    assert any(r["decision"] == "promoted" for r in honest[1:]), honest
    for r in poisoned[1:]:
        assert r["n_flipped"] > 0 and r["alarm"] and r["decision"] == "rejected", r
        assert "disagreement alarm" in r["reason"]
    store = LabelStore(redis_client, prefix=next(p for p in redis_client.scan_iter("poisoned-*:labels:quarantine"))
                       .decode().rsplit(":labels:", 1)[0])
    assert len(store.quarantined()) >= sum(r["n_flipped"] for r in poisoned[1:]) // 2
