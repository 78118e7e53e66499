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

import logging
import time
import uuid
from dataclasses import dataclass
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

from ..composition import build_label_worker, build_scoring_worker, build_trainer_service
from ..data import bundled_sample
from ..deploy.stack import LocalStack, StackInfo
from ..schemas.settings import Settings
from ..stream.clients import build_consumer, build_producer, build_redis, ensure_topics
from ..stream.replay import Dataset, load_dataset
from ..trainer.bootstrap import bootstrap_model
from ..trainer.detectors.mnp import MNPDetector
from ..trainer.evaluation import detection_metrics, precision_at_budget
from ..trainer.registry import ModelRegistry
from ..trainer.store import TrafficReservoir
from ..trainer.training import TrainingData, fit_mnp
from .report import DemoReport, RoundRecord, VersionQuality, write_report
from .rounds import DemoRounds, RoundInput, SimulatedAnalyst

__all__ = ["DemoOptions", "run_demo"]

#: Every fit must take seconds on 2 cores: a fixed epoch schedule (no validation passes) and one
#: member (the product's three would triple each retrain; the demo is about the loop, not the last
#: few points of AUC-PR).
_DEMO_MNP_PARAMS: dict[str, Any] = {"validation": "fixed_epochs", "max_epochs": 10, "pretrain_max_epochs": 5,
                                    "n_batches_per_epoch": 32, "n_members": 1}


@dataclass(frozen=True)
class DemoOptions:
    """What ``protoguard demo`` lets a user choose (the CLI's flags, one field each)."""

    data: Path | None = None
    n_train: int = 3000
    n_labelled: int = 10
    rounds: int = 4
    events_per_round: int = 3000
    analyst_budget: int = 60
    analyst_error: float = 0.0
    audit_share: float = 0.5
    n_eval: int = 4000
    contamination: float | None = None
    no_weighting: bool = False
    #: MNP's likelihood weighting (trainer/detectors/mnp_weighting.py); --no-weighting means "off"
    weighting_rule: str = "adaptive"
    report: Path = Path("demo-report")
    seed: int = 0
    keep_stack: bool = False

    @property
    def weighting(self) -> str:
        return "off" if self.no_weighting else self.weighting_rule


def run_demo(options: DemoOptions, settings: Settings) -> int:
    """Start the local stack, run the label loop, write the report; 0 when nothing was lost."""
    console = Console()
    if logging.getLogger().level >= logging.INFO:  # the demo narrates itself; component logs would interleave
        logging.getLogger("protoguard").setLevel(logging.ERROR)
    torch.manual_seed(options.seed)  # fits are seeded too; this pins what is left (e.g. dropout in a warm start)
    # One thread: scorer, label consumer and trainer share this process, and on 2 cores a second
    # intra-op thread stalls at every barrier whenever anything else runs (fits went 1.3 s -> 30+ s).
    torch.set_num_threads(1)
    stack = LocalStack(settings.stack)
    with console.status("starting Kafka + Redis"):
        info = stack.up()
    console.print(f"stack up: Kafka {info.kafka_version} at {info.bootstrap_servers}, Redis at {info.redis_url} "
                  f"({info.startup_s:.1f} s)")
    try:
        return _demo(options, settings, info, console)
    finally:
        if not options.keep_stack:
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


@dataclass(frozen=True)
class _Segments:
    """The demo's disjoint slices of the dataset: first training sample, one per round, evaluation."""

    X_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    rounds: list[npt.NDArray[np.int64]]
    X_eval: npt.NDArray[np.float32]
    y_eval: npt.NDArray[np.int64]


def _split(dataset: Dataset, options: DemoOptions, rng: np.random.Generator) -> _Segments:
    if dataset.y is None:
        raise SystemExit("demo: the dataset needs labels (y) to measure quality")
    sizes = [options.n_train, *[options.events_per_round] * options.rounds, options.n_eval]
    segments = _segments(dataset.y, sizes, options.contamination, rng)
    train, eval_ = segments[0], segments[-1]
    return _Segments(dataset.X[train], dataset.y[train], segments[1:-1], dataset.X[eval_], dataset.y[eval_])


def _demo_settings(settings: Settings, info: StackInfo, options: DemoOptions) -> Settings:
    """The user's settings on fresh topics, group and Redis prefix, with the demo's short schedules."""
    token = uuid.uuid4().hex[:6]
    kafka = {"bootstrap_servers": info.bootstrap_servers, "events_topic": f"demo-events-{token}",
             "alerts_topic": f"demo-alerts-{token}", "dlq_topic": f"demo-dlq-{token}",
             "labels_topic": f"demo-labels-{token}", "consumer_group": f"demo-scorers-{token}",
             "labels_group": f"demo-labels-{token}"}
    trainer = {"n_epochs": _DEMO_MNP_PARAMS["max_epochs"], "weighting": options.weighting,
               "random_state": options.seed, "min_new_labels": max(1, options.analyst_budget // 2),
               "interval_s": 86_400, "keep_versions": max(10, options.rounds + 2)}
    dump = settings.model_dump()
    return Settings.model_validate({
        **dump, "kafka": {**dump["kafka"], **kafka},
        "redis": {**dump["redis"], "url": info.redis_url, "prefix": f"demo{token}"},
        "stream": {**dump["stream"], "reservoir_size": 5000, "model_poll_s": 0.5},
        "trainer": {**dump["trainer"], **trainer}})


def _demo(options: DemoOptions, settings: Settings, info: StackInfo, console: Console) -> int:
    started = time.monotonic()
    dataset = load_dataset(options.data or bundled_sample())
    rng = np.random.default_rng(options.seed)
    seg = _split(dataset, options, rng)
    budget = settings.trainer.alert_budget
    labelled = np.flatnonzero(seg.y_train == 1)[: options.n_labelled]
    unlabelled = np.setdiff1d(np.arange(len(seg.X_train)), labelled)
    data = TrainingData(X_unlabelled=seg.X_train[unlabelled], X_anomalies=seg.X_train[labelled],
                        X_normals=np.empty((0, seg.X_train.shape[1]), np.float32), feature_names=dataset.feature_names)
    with console.status(f"fitting the first MNP on {len(seg.X_train)} rows ({int(seg.y_train.sum())} hidden attacks, "
                        f"{len(labelled)} labelled)"):
        first = fit_mnp(data, params={**_DEMO_MNP_PARAMS, "weighting": options.weighting}, random_state=options.seed)
        iforest = IsolationForest(random_state=options.seed).fit(seg.X_train)

    demo_settings = _demo_settings(settings, info, options)
    kafka = demo_settings.kafka
    ensure_topics(kafka, {kafka.events_topic: kafka.n_partitions, kafka.alerts_topic: kafka.n_partitions,
                          kafka.dlq_topic: 1, kafka.labels_topic: 1})
    client = build_redis(demo_settings.redis)
    scorer = build_scoring_worker(demo_settings, client=client, random_state=options.seed)
    registry = scorer.watcher.registry
    first_version = bootstrap_model(first, data.X_unlabelled, alert_budget=budget, summary=data.summary(),
                                    registry=registry, note="demo: first model", promote="always").version
    assert first_version is not None
    scorer.watcher.start()
    scorer.watcher.refresh(force=True)
    labeller = build_label_worker(demo_settings, client)
    trainer = build_trainer_service(demo_settings, client,
                                    mnp_params={k: v for k, v in _DEMO_MNP_PARAMS.items() if k != "max_epochs"})
    producer = build_producer(kafka)
    alert_reader = build_consumer(kafka, f"demo-read-{demo_settings.redis.prefix}", kafka.alerts_topic)
    rounds = DemoRounds(scorer=scorer, labeller=labeller, trainer=trainer, producer=producer, alert_reader=alert_reader,
                        analyst=SimulatedAnalyst(budget=options.analyst_budget, error_rate=options.analyst_error,
                                                 audit_share=options.audit_share, rng=rng),
                        events_topic=kafka.events_topic, labels_topic=kafka.labels_topic,
                        feature_names=dataset.feature_names, id_prefix=demo_settings.redis.prefix)
    try:
        records, round_of_version = _run_rounds(rounds, dataset, seg, options, first_version, console)
    finally:
        scorer.close()
        labeller.close()
        alert_reader.close()
        producer.close()

    with console.status("scoring the evaluation segment with every model version"):
        report, champion_version = _evaluate(registry, scorer.stores.reservoir, rounds, seg, options, records,
                                             round_of_version, iforest, budget, len(labelled), rng)
    html = write_report(report, options.report)
    summary = _summary(report, options, first_version, champion_version, rounds, started)
    (Path(options.report) / "summary.json").write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    _print_summary(console, report.versions, records, summary)
    console.print(f"report: {html.resolve()}")
    ok = rounds.n_scored == rounds.n_streamed and rounds.n_dead == rounds.n_malformed
    return 0 if ok else 1


def _run_rounds(rounds: DemoRounds, dataset: Dataset, seg: _Segments, options: DemoOptions, first_version: str,
                console: Console) -> tuple[list[RoundRecord], dict[str, int]]:
    """Stream each round, let the analyst label, retrain; returns the rounds and which round made each version."""
    records: list[RoundRecord] = []
    round_of_version = {first_version: 0}
    with Progress(console=console) as progress:
        task = progress.add_task("analyst rounds", total=options.rounds)
        for number, rows in enumerate(seg.rounds, start=1):
            progress.update(task, description=f"round {number}/{options.rounds}: score, label, retrain")
            record, outcome = rounds.run_round(number, RoundInput(dataset.X[rows], dataset.y[rows],
                                                                  n_malformed=20 if number == 1 else 0))
            records.append(record)
            if outcome is not None and outcome.version is not None:
                round_of_version[outcome.version] = number
                progress.console.print(f"round {number}: {record.n_alerts} alerts ({record.n_true_alerts} attacks), "
                                       f"{record.n_labels} labels -> version {outcome.version} {outcome.decision}: "
                                       f"{outcome.reason}")
            progress.advance(task)
    return records, round_of_version


def _evaluate(registry: ModelRegistry, reservoir: TrafficReservoir, rounds: DemoRounds, seg: _Segments,
              options: DemoOptions, records: list[RoundRecord], round_of_version: dict[str, int],
              iforest: IsolationForest, budget: float, n_labelled: int,
              rng: np.random.Generator) -> tuple[DemoReport, str]:
    """Every version on the evaluation segment, the champion's weights on the pool, the 2-D map."""
    versions = _version_quality(registry, round_of_version, seg.X_eval, seg.y_eval, budget)
    if_scores = -iforest.score_samples(seg.X_eval)
    if_auc = detection_metrics(seg.y_eval, if_scores)["auc_pr"]
    if_precision = precision_at_budget(seg.y_eval, if_scores, budget)
    champion_version = registry.current_version()
    assert champion_version is not None
    champion = MNPDetector.load(*registry.load(champion_version))
    n_features = seg.X_eval.shape[1]
    pool_ids, X_pool = reservoir.sample(n_features)
    y_pool = np.array([rounds.truth.get(e, 0) for e in pool_ids], dtype=np.int64)
    pool_weights = champion.likelihood_weights(X_pool) if len(X_pool) else np.empty(0, np.float32)
    sample = rng.choice(len(seg.X_eval), size=min(1500, len(seg.X_eval)), replace=False)
    map_events, map_prototypes = _embedding_map(champion, seg.X_eval[sample])
    contamination = "natural" if options.contamination is None else f"{options.contamination:.0%}"
    report = DemoReport(
        title=f"protoguard demo: label loop on UNSW-NB15 (seed {options.seed}, "
              f"weighting {options.weighting})",
        settings={"seed": options.seed, "contamination": contamination, "likelihood weighting": options.weighting,
                  "first sample rows / labelled attacks": f"{len(seg.X_train)} / {n_labelled}",
                  "rounds x events": f"{options.rounds} x {options.events_per_round}",
                  "analyst budget / error rate / audit share":
                  f"{options.analyst_budget} / {options.analyst_error} / {options.audit_share}", "alert budget": budget,
                  "evaluation segment rows (attacks)": f"{len(seg.y_eval)} ({int(seg.y_eval.sum())})"},
        versions=versions, rounds=records, iforest_auc_pr=if_auc, iforest_precision_at_budget=if_precision,
        pool_weights_normal=pool_weights[y_pool == 0], pool_weights_anomaly=pool_weights[y_pool == 1],
        map_events=map_events, map_is_anomaly=seg.y_eval[sample] == 1, map_prototypes=map_prototypes)
    return report, champion_version


def _summary(report: DemoReport, options: DemoOptions, first_version: str, champion_version: str,
             rounds: DemoRounds, started: float) -> dict[str, Any]:
    versions = report.versions
    first_q = next(v for v in versions if v.version == first_version)
    final_q = next(v for v in versions if v.version == champion_version)

    def mean_or_none(values: npt.NDArray[np.float32]) -> float | None:
        return float(np.mean(values)) if len(values) else None

    return {"seed": options.seed, "contamination": options.contamination, "weighting": options.weighting,
            "first_version": first_version, "final_version": champion_version,
            "auc_pr_before": first_q.auc_pr, "auc_pr_after": final_q.auc_pr, "iforest_auc_pr": report.iforest_auc_pr,
            "precision_before": first_q.precision_at_budget, "precision_after": final_q.precision_at_budget,
            "n_promoted": sum(v.gate.get("decision") == "promote" for v in versions),
            "n_rejected": sum(v.status == "rejected" for v in versions),
            "pool_weight_mean_normal": mean_or_none(report.pool_weights_normal),
            "pool_weight_mean_anomaly": mean_or_none(report.pool_weights_anomaly),
            "n_streamed": rounds.n_streamed, "n_scored": rounds.n_scored, "n_dead": rounds.n_dead,
            "round_timings": rounds.timings, "seconds": round(time.monotonic() - started, 1)}


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


def _print_summary(console: Console, versions: list[VersionQuality], records: list[RoundRecord],
                   summary: dict[str, Any]) -> None:
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
