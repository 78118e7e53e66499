"""``protoguard demo``: the pipeline end to end on the embedded default (local Kafka + Redis).

Starts the stack, fits a first MNP model on a small contaminated sample of the bundled UNSW-NB15
flows with a handful of labelled attacks, registers and promotes it, streams the rest of the
flows (plus some malformed messages) through a real scorer, and reports alerts, dead letters
and the stream's AUC-PR beside an unsupervised reference (Isolation Forest on the same sample).
The analyst-label loop (retraining from labels) is not part of it yet.
"""
from __future__ import annotations

import argparse
import time
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sklearn.ensemble import IsolationForest

from ..deploy.stack import LocalStack
from ..schemas.settings import KafkaSettings, Settings
from ..stream.clients import build_consumer, build_producer, build_redis, ensure_topics
from ..stream.reload import ModelWatcher
from ..stream.replay import encode_events, load_dataset, malformed_messages
from ..stream.worker import ScoringWorker, WorkerStores
from ..trainer.evaluation import detection_metrics
from ..trainer.registry import ModelRegistry
from ..trainer.store import FeatureStore, TrafficReservoir
from ..trainer.training import TrainingData, calibrate, finalize_manifest, fit_mnp

__all__ = ["bundled_sample", "register"]

#: A first model must exist within seconds on 2 cores: few epochs, fixed schedule.
_DEMO_MNP_PARAMS = {"validation": "fixed_epochs", "max_epochs": 10, "pretrain_max_epochs": 5, "n_batches_per_epoch": 32}


def bundled_sample() -> Path:
    return Path(str(resources.files("protoguard") / "data" / "unsw_nb15_sample.npz"))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="run the pipeline end to end on the local stack and a bundled dataset")
    parser.add_argument("--data", type=Path, default=None, help="dataset file (default: the bundled UNSW-NB15 sample)")
    parser.add_argument("--n-train", type=int, default=4000, help="rows of the first (contaminated) training sample")
    parser.add_argument("--n-labelled", type=int, default=10, help="labelled anomalies among them")
    parser.add_argument("--n-events", type=int, default=8000, help="rows streamed through the scorer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running afterwards")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    console = Console()
    stack = LocalStack(settings.stack)
    with console.status("starting Kafka + Redis"):
        info = stack.up()
    console.print(f"stack up: Kafka {info.kafka_version} at {info.bootstrap_servers}, Redis at {info.redis_url} "
                  f"({info.startup_s:.1f} s)")
    try:
        return _demo(args, settings, info, console)
    finally:
        if not args.keep_stack:
            stack.down()
            console.print("stack down")


def _demo(args: argparse.Namespace, settings: Settings, info, console: Console) -> int:
    dataset = load_dataset(args.data or bundled_sample())
    assert dataset.y is not None, "the demo needs a dataset with labels (y) to report quality"
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(dataset.X))
    train_rows, stream_rows = order[: args.n_train], order[args.n_train: args.n_train + args.n_events]
    X_train, y_train = dataset.X[train_rows], dataset.y[train_rows]
    labelled = np.flatnonzero(y_train == 1)[: args.n_labelled]
    unlabelled = np.setdiff1d(np.arange(len(X_train)), labelled)
    data = TrainingData(X_unlabelled=X_train[unlabelled], X_anomalies=X_train[labelled],
                        X_normals=np.empty((0, X_train.shape[1]), np.float32), feature_names=dataset.feature_names)
    with console.status(f"fitting MNP on {len(X_train)} rows ({int(y_train.sum())} hidden attacks, {len(labelled)} labelled)"):
        started = time.monotonic()
        detector = fit_mnp(data, params=_DEMO_MNP_PARAMS, random_state=args.seed)
        fit_s = time.monotonic() - started
        threshold, calibration = calibrate(detector.score(data.X_unlabelled), alert_budget=settings.trainer.alert_budget)
        weights, manifest = detector.save()
        manifest = finalize_manifest(manifest, threshold=threshold, calibration=calibration, summary=data.summary())
        iforest = IsolationForest(random_state=args.seed).fit(X_train)

    token = uuid.uuid4().hex[:6]
    kafka = KafkaSettings(**{**settings.kafka.model_dump(), "bootstrap_servers": info.bootstrap_servers,
                             "events_topic": f"demo-events-{token}", "alerts_topic": f"demo-alerts-{token}",
                             "dlq_topic": f"demo-dlq-{token}", "consumer_group": f"demo-scorers-{token}"})
    ensure_topics(info.bootstrap_servers, {kafka.events_topic: kafka.n_partitions, kafka.alerts_topic: kafka.n_partitions,
                                           kafka.dlq_topic: 1})
    client = build_redis(info.redis_url)
    prefix = f"demo{token}"
    registry = ModelRegistry(client, prefix=prefix)
    version = registry.register(weights, manifest, note="demo: first model")
    registry.promote(version, reason="first model")

    X_stream, y_stream = dataset.X[stream_rows], dataset.y[stream_rows]
    producer = build_producer(info.bootstrap_servers)
    event_ids = []
    for key, value, event_id in encode_events(X_stream, dataset.feature_names, id_prefix=f"demo{token}"):
        producer.send(kafka.events_topic, key=key, value=value)
        event_ids.append(event_id)
    bad = malformed_messages(max(1, len(X_stream) // 100), dataset.feature_names, seed=args.seed)
    for value in bad:
        producer.send(kafka.events_topic, value=value)
    producer.flush()
    producer.close()

    worker = ScoringWorker(
        build_consumer(info.bootstrap_servers, kafka.consumer_group, kafka.events_topic, max_poll_records=settings.stream.max_batch),
        build_producer(info.bootstrap_servers), watcher=ModelWatcher(registry), kafka=kafka, stream=settings.stream,
        stores=WorkerStores(client, FeatureStore(client, prefix=prefix), TrafficReservoir(client, prefix=prefix)),
        random_state=args.seed,
    )
    total = len(X_stream) + len(bad)
    done = n_alerts = n_dead = 0
    worker.watcher.start()
    worker.watcher.refresh(force=True)
    started = time.monotonic()
    with Progress(console=console) as progress:
        task = progress.add_task("scoring the stream", total=total)
        while done < total and time.monotonic() - started < 300:
            outcome = worker.process_one_batch()
            done += outcome.n_records
            n_alerts += outcome.n_alerts
            n_dead += outcome.n_dead
            progress.update(task, completed=done)
    score_s = time.monotonic() - started
    worker.close()

    alert_ids = set()
    consumer = build_consumer(info.bootstrap_servers, f"demo-read-{token}", kafka.alerts_topic)
    idle = 0
    while idle < 4:
        polled = consumer.poll(timeout_ms=500)
        idle = 0 if polled else idle + 1
        alert_ids |= {orjson.loads(r.value)["event_id"] for rs in polled.values() for r in rs}
    consumer.close()
    is_alert = np.isin(np.asarray(event_ids), np.fromiter(alert_ids, dtype=object, count=len(alert_ids)))
    precision = float(y_stream[is_alert].mean()) if is_alert.any() else float("nan")
    mnp_metrics = detection_metrics(y_stream, detector.score(X_stream))
    if_metrics = detection_metrics(y_stream, -iforest.score_samples(X_stream))

    table = Table(title=f"protoguard demo (model version {version}, fit {fit_s:.1f} s)")
    for col in ("", "value"):
        table.add_column(col)
    table.add_row("events streamed / malformed", f"{len(X_stream)} / {len(bad)}")
    table.add_row("scored / dead letters", f"{done - n_dead} / {n_dead}")
    table.add_row("alerts (budget {:.0%})".format(settings.trainer.alert_budget), f"{len(alert_ids)} (precision {precision:.2f})")
    table.add_row("attacks in the stream", f"{int(y_stream.sum())} ({y_stream.mean():.1%})")
    table.add_row("stream AUC-PR: MNP (10 labels) vs IsolationForest", f"{mnp_metrics['auc_pr']:.3f} vs {if_metrics['auc_pr']:.3f}")
    table.add_row("stream AUC-ROC: MNP vs IsolationForest", f"{mnp_metrics['auc_roc']:.3f} vs {if_metrics['auc_roc']:.3f}")
    table.add_row("scoring throughput (events/s, incl. Kafka + Redis)", f"{total / score_s:,.0f}")
    console.print(table)
    return 0 if done == total and n_dead == len(bad) and len(alert_ids) == n_alerts else 1
