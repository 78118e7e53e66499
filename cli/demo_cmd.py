"""``protoguard demo``: the pipeline and its label loop end to end on the embedded default.

Starts the local Kafka + Redis stack; fits a first MNP on a small contaminated sample of the
bundled UNSW-NB15 flows with a handful of labelled attacks; streams the rest in rounds through
the real scorer; after each round a simulated analyst answers a budget of alerts, the label
consumer joins the answers with the stored features, and the trainer retrains, gates and
promotes. It ends with a summary table and an HTML report (each model version's AUC-PR and
precision on a fixed evaluation segment beside Isolation Forest, alerts per round, the
likelihood weights of true normals vs hidden attacks in the pool, a 2-D map of prototypes).
"""
from __future__ import annotations

import argparse
import logging
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from ..deploy.stack import LocalStack, StackInfo
from ..schemas.settings import KafkaSettings, Settings, StreamSettings, TrainerSettings
from ..stream.clients import build_consumer, build_producer, build_redis, ensure_topics
from ..stream.labels import LabelWorker
from ..stream.reload import ModelWatcher
from ..stream.replay import load_dataset
from ..stream.worker import ScoringWorker, WorkerStores
from ..trainer.detectors.mnp import MNPDetector
from ..trainer.evaluation import detection_metrics, precision_at_budget
from ..trainer.registry import ModelRegistry
from ..trainer.retraining import Retrainer, RetrainStores
from ..trainer.scheduler import LeaderLock, TrainerService
from ..trainer.store import FeatureStore, LabelStore, TrafficReservoir
from ..trainer.training import TrainingData, calibrate, finalize_manifest, fit_mnp
from .demo_report import DemoReport, VersionQuality, write_report
from .demo_rounds import DemoRounds, RoundInput, SimulatedAnalyst

__all__ = ["bundled_sample", "register"]

#: Every fit must take seconds on 2 cores: a fixed epoch schedule (no validation passes) and one
#: member (the product's three would triple each retrain; the demo is about the loop, not the last
#: few points of AUC-PR).
_DEMO_MNP_PARAMS: dict[str, Any] = {"validation": "fixed_epochs", "max_epochs": 10, "pretrain_max_epochs": 5,
                                    "n_batches_per_epoch": 32, "n_members": 1}


def bundled_sample() -> Path:
    return Path(str(resources.files("protoguard") / "data" / "unsw_nb15_sample.npz"))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="run the pipeline and its label loop end to end on the local stack")
    parser.add_argument("--data", type=Path, default=None, help="dataset file (default: the bundled UNSW-NB15 sample)")
    parser.add_argument("--n-train", type=int, default=3000, help="rows of the first (contaminated) training sample")
    parser.add_argument("--n-labelled", type=int, default=10, help="labelled attacks among them")
    parser.add_argument("--rounds", type=int, default=4, help="analyst rounds")
    parser.add_argument("--events-per-round", type=int, default=3000)
    parser.add_argument("--analyst-budget", type=int, default=60, help="alerts the analyst answers per round")
    parser.add_argument("--analyst-error", type=float, default=0.0, help="probability an answer is wrong")
    parser.add_argument("--audit-share", type=float, default=0.5,
                        help="share of the analyst budget spent on random unalerted events")
    parser.add_argument("--n-eval", type=int, default=4000, help="rows of the evaluation segment (never streamed)")
    parser.add_argument("--contamination", type=float, default=None,
                        help="resample so this share of every segment is attacks (default: the data's own, ~10%%)")
    parser.add_argument("--no-weighting", action="store_true", help="ablation: MNP's likelihood weighting off")
    parser.add_argument("--report", type=Path, default=Path("demo-report"), help="folder for index.html and plots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running afterwards")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    console = Console()
    if logging.getLogger().level >= logging.INFO:  # the demo narrates itself; component logs would interleave
        logging.getLogger("protoguard").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)  # fits are seeded too; this pins what is left (e.g. dropout in a warm start)
    # One thread: scorer, label consumer and trainer share this process, and on 2 cores a second
    # intra-op thread stalls at every barrier whenever anything else runs (fits went 1.3 s -> 30+ s).
    torch.set_num_threads(1)
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


def _segments(y: npt.NDArray[np.int64], sizes: list[int], contamination: float | None,
              rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    """Disjoint row sets of the given sizes; with ``contamination``, each holds that share of attacks."""
    if contamination is None:
        order = rng.permutation(len(y))
        bounds = np.cumsum([0, *sizes])
        if bounds[-1] > len(y):
            raise SystemExit(f"demo: the dataset has {len(y)} rows, the segments need {bounds[-1]}")
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    attacks, normals = rng.permutation(np.flatnonzero(y == 1)), rng.permutation(np.flatnonzero(y == 0))
    n_att = [int(round(contamination * n)) for n in sizes]
    if sum(n_att) > len(attacks) or sum(sizes) - sum(n_att) > len(normals):
        raise SystemExit(f"demo: not enough rows for contamination {contamination} at these segment sizes")
    out, a, b = [], 0, 0
    for n, k in zip(sizes, n_att):
        out.append(rng.permutation(np.concatenate([attacks[a:a + k], normals[b:b + n - k]])))
        a, b = a + k, b + n - k
    return out


def _embedding_map(det: MNPDetector, X: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Events and prototypes in 2-D: one PCA fitted on both, so they share the projection."""
    z, c = det.embed(X)
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate([z, c]))
    return pca.transform(z).astype(np.float32), pca.transform(c).astype(np.float32)


def _demo(args: argparse.Namespace, settings: Settings, info: StackInfo, console: Console) -> int:
    started = time.monotonic()
    dataset = load_dataset(args.data or bundled_sample())
    if dataset.y is None:
        raise SystemExit("demo: the dataset needs labels (y) to measure quality")
    rng = np.random.default_rng(args.seed)
    segments = _segments(dataset.y, [args.n_train, *[args.events_per_round] * args.rounds, args.n_eval],
                         args.contamination, rng)
    train_rows, round_rows, eval_rows = segments[0], segments[1:-1], segments[-1]
    X_train, y_train = dataset.X[train_rows], dataset.y[train_rows]
    X_eval, y_eval = dataset.X[eval_rows], dataset.y[eval_rows]
    weighting = not args.no_weighting
    budget = settings.trainer.alert_budget

    labelled = np.flatnonzero(y_train == 1)[: args.n_labelled]
    unlabelled = np.setdiff1d(np.arange(len(X_train)), labelled)
    data = TrainingData(X_unlabelled=X_train[unlabelled], X_anomalies=X_train[labelled],
                        X_normals=np.empty((0, X_train.shape[1]), np.float32), feature_names=dataset.feature_names)
    with console.status(f"fitting the first MNP on {len(X_train)} rows ({int(y_train.sum())} hidden attacks, "
                        f"{len(labelled)} labelled)"):
        first = fit_mnp(data, params={**_DEMO_MNP_PARAMS, "weighting": weighting}, random_state=args.seed)
        threshold, calibration = calibrate(first.score(data.X_unlabelled), alert_budget=budget)
        weights, manifest = first.save()
        manifest = finalize_manifest(manifest, threshold=threshold, calibration=calibration, summary=data.summary())
        iforest = IsolationForest(random_state=args.seed).fit(X_train)

    token = uuid.uuid4().hex[:6]
    kafka = KafkaSettings(**{**settings.kafka.model_dump(), "bootstrap_servers": info.bootstrap_servers,
                             "events_topic": f"demo-events-{token}", "alerts_topic": f"demo-alerts-{token}",
                             "dlq_topic": f"demo-dlq-{token}", "labels_topic": f"demo-labels-{token}",
                             "consumer_group": f"demo-scorers-{token}", "labels_group": f"demo-labels-{token}"})
    ensure_topics(kafka, {kafka.events_topic: kafka.n_partitions, kafka.alerts_topic: kafka.n_partitions,
                                           kafka.dlq_topic: 1, kafka.labels_topic: 1})
    stream = StreamSettings(**{**settings.stream.model_dump(), "reservoir_size": 5000, "model_poll_s": 0.5})
    trainer_settings = TrainerSettings(**{
        **settings.trainer.model_dump(), "n_epochs": _DEMO_MNP_PARAMS["max_epochs"], "weighting": weighting,
        "random_state": args.seed, "min_new_labels": max(1, args.analyst_budget // 2), "interval_s": 86_400})
    client = build_redis(info.redis_url)
    prefix = f"demo{token}"
    registry = ModelRegistry(client, prefix=prefix, keep_versions=max(10, args.rounds + 2))
    first_version = registry.register(weights, manifest, note="demo: first model")
    registry.promote(first_version, reason="first model")

    features = FeatureStore(client, prefix=prefix, ttl_s=stream.features_ttl_s)
    reservoir = TrafficReservoir(client, prefix=prefix, capacity=stream.reservoir_size)
    labels = LabelStore(client, prefix=prefix)
    scorer = ScoringWorker(
        build_consumer(kafka, kafka.consumer_group, kafka.events_topic, max_poll_records=stream.max_batch),
        build_producer(kafka), watcher=ModelWatcher(registry, poll_s=stream.model_poll_s),
        stores=WorkerStores(client, features, reservoir), kafka=kafka, stream=stream, random_state=args.seed)
    scorer.watcher.start()
    scorer.watcher.refresh(force=True)
    labeller = LabelWorker(build_consumer(kafka, kafka.labels_group, kafka.labels_topic),
                           build_producer(kafka), features=features, labels=labels,
                           registry=registry, kafka=kafka)
    retrainer = Retrainer(RetrainStores(client=client, labels=labels, reservoir=reservoir, registry=registry),
                          trainer_settings, mnp_params={k: v for k, v in _DEMO_MNP_PARAMS.items() if k != "max_epochs"})
    trainer = TrainerService(retrainer, LeaderLock(client, f"{prefix}:trainer:lock",
                                                   timeout_s=trainer_settings.lock_timeout_s), trainer_settings)
    producer = build_producer(kafka)
    alert_reader = build_consumer(kafka, f"demo-read-{token}", kafka.alerts_topic)
    rounds = DemoRounds(scorer=scorer, labeller=labeller, trainer=trainer, producer=producer, alert_reader=alert_reader,
                        analyst=SimulatedAnalyst(budget=args.analyst_budget, error_rate=args.analyst_error,
                                                 audit_share=args.audit_share, rng=rng),
                        events_topic=kafka.events_topic, labels_topic=kafka.labels_topic,
                        feature_names=dataset.feature_names, id_prefix=f"demo{token}")
    records, round_of_version = [], {first_version: 0}
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("analyst rounds", total=args.rounds)
            for number, rows in enumerate(round_rows, start=1):
                progress.update(task, description=f"round {number}/{args.rounds}: score, label, retrain")
                record, outcome = rounds.run_round(number, RoundInput(dataset.X[rows], dataset.y[rows],
                                                                      n_malformed=20 if number == 1 else 0))
                records.append(record)
                if outcome is not None and outcome.version is not None:
                    round_of_version[outcome.version] = number
                    progress.console.print(f"round {number}: {record.n_alerts} alerts ({record.n_true_alerts} attacks), "
                                           f"{record.n_labels} labels -> version {outcome.version} {outcome.decision}: "
                                           f"{outcome.reason}")
                progress.advance(task)
    finally:
        scorer.close()
        labeller.close()
        alert_reader.close()
        producer.close()

    with console.status("scoring the evaluation segment with every model version"):
        versions = _version_quality(registry, round_of_version, X_eval, y_eval, budget)
        if_scores = -iforest.score_samples(X_eval)
        if_auc, if_precision = detection_metrics(y_eval, if_scores)["auc_pr"], precision_at_budget(y_eval, if_scores, budget)
        champion_version = registry.current_version()
        assert champion_version is not None
        champion = MNPDetector.load(*registry.load(champion_version))
        pool_ids, X_pool = reservoir.sample(len(dataset.feature_names))
        y_pool = np.array([rounds.truth.get(e, 0) for e in pool_ids], dtype=np.int64)
        pool_weights = champion.likelihood_weights(X_pool) if len(X_pool) else np.empty(0, np.float32)
        sample = rng.choice(len(X_eval), size=min(1500, len(X_eval)), replace=False)
        map_events, map_prototypes = _embedding_map(champion, X_eval[sample])

    contamination = "natural" if args.contamination is None else f"{args.contamination:.0%}"
    report = DemoReport(
        title=f"protoguard demo: label loop on UNSW-NB15 (seed {args.seed}, weighting {'on' if weighting else 'off'})",
        settings={"seed": args.seed, "contamination": contamination, "likelihood weighting": weighting,
                  "first sample rows / labelled attacks": f"{len(X_train)} / {len(labelled)}",
                  "rounds x events": f"{args.rounds} x {args.events_per_round}", "analyst budget / error rate / audit share":
                  f"{args.analyst_budget} / {args.analyst_error} / {args.audit_share}", "alert budget": budget,
                  "evaluation segment rows (attacks)": f"{len(y_eval)} ({int(y_eval.sum())})"},
        versions=versions, rounds=records, iforest_auc_pr=if_auc, iforest_precision_at_budget=if_precision,
        pool_weights_normal=pool_weights[y_pool == 0], pool_weights_anomaly=pool_weights[y_pool == 1],
        map_events=map_events, map_is_anomaly=y_eval[sample] == 1, map_prototypes=map_prototypes)
    html = write_report(report, args.report)
    first_q = next(v for v in versions if v.version == first_version)
    final_q = next(v for v in versions if v.version == champion_version)
    summary = {"seed": args.seed, "contamination": args.contamination, "weighting": weighting,
               "first_version": first_version, "final_version": champion_version,
               "auc_pr_before": first_q.auc_pr, "auc_pr_after": final_q.auc_pr, "iforest_auc_pr": if_auc,
               "precision_before": first_q.precision_at_budget, "precision_after": final_q.precision_at_budget,
               "n_promoted": sum(v.gate.get("decision") == "promote" for v in versions),
               "n_rejected": sum(v.status == "rejected" for v in versions),
               "pool_weight_mean_normal": float(np.mean(report.pool_weights_normal)) if len(report.pool_weights_normal) else None,
               "pool_weight_mean_anomaly": float(np.mean(report.pool_weights_anomaly)) if len(report.pool_weights_anomaly) else None,
               "n_streamed": rounds.n_streamed, "n_scored": rounds.n_scored, "n_dead": rounds.n_dead,
               "round_timings": rounds.timings, "seconds": round(time.monotonic() - started, 1)}
    (Path(args.report) / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    _print_summary(console, versions, records, summary)
    console.print(f"report: {html.resolve()}")
    ok = rounds.n_scored == rounds.n_streamed and rounds.n_dead == rounds.n_malformed
    return 0 if ok else 1


def _version_quality(registry: ModelRegistry, round_of_version: dict[str, int], X: npt.NDArray[np.float32],
                     y: npt.NDArray[np.int64], budget: float) -> list[VersionQuality]:
    current = registry.current_version()
    out = []
    for info in registry.versions():
        scores = MNPDetector.load(*registry.load(info.version)).score(X)
        gate = registry.manifest(info.version).metrics.get("gate") or {}
        flat = {"decision": gate.get("decision", "first model"), "reason": gate.get("reason", "")}
        for side in ("candidate", "champion"):
            if isinstance(gate.get(side), dict) and gate[side].get("auc_pr") is not None:
                flat[f"{side} held-back AUC-PR"] = round(float(gate[side]["auc_pr"]), 3)
        status = "champion" if info.version == current else info.status
        out.append(VersionQuality(version=info.version, round=round_of_version.get(info.version, 0), status=status,
                                  auc_pr=detection_metrics(y, scores)["auc_pr"],
                                  precision_at_budget=precision_at_budget(y, scores, budget), gate=flat))
    return sorted(out, key=lambda v: int(v.version))


def _print_summary(console: Console, versions: list[VersionQuality], records: list, summary: dict) -> None:
    table = Table(title="model versions on the evaluation segment")
    for col in ("version", "round", "status", "AUC-PR", "precision@budget", "gate"):
        table.add_column(col)
    for v in versions:
        table.add_row(v.version, str(v.round), v.status, f"{v.auc_pr:.3f}", f"{v.precision_at_budget:.3f}",
                      str(v.gate.get("reason", ""))[:60])
    table.add_row("IForest", "0", "reference", f"{summary['iforest_auc_pr']:.3f}", "", "")
    console.print(table)
    rounds = Table(title="analyst rounds")
    for col in ("round", "serving", "events", "alerts", "true alerts", "labels", "wrong labels"):
        rounds.add_column(col)
    for r in records:
        rounds.add_row(str(r.round), r.model_version, str(r.n_events), str(r.n_alerts), str(r.n_true_alerts),
                       str(r.n_labels), str(r.n_wrong_labels))
    console.print(rounds)
    console.print(f"stream AUC-PR before the label rounds {summary['auc_pr_before']:.3f} -> after "
                  f"{summary['auc_pr_after']:.3f} (Isolation Forest {summary['iforest_auc_pr']:.3f}); "
                  f"{summary['n_scored']} events scored, {summary['n_dead']} dead letters, {summary['seconds']:.0f} s")
