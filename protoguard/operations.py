"""One-shot operations an operator runs: replay a file, train offline, manage models and labels.

Kept apart from the CLI so each is a plain function with typed arguments (callable from a
notebook or a job runner), and apart from ``services`` because none of them runs for long.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .composition import build_registry
from .schemas.settings import Settings
from .stream.clients import build_producer, build_redis, ensure_topics
from .stream.replay import encode_events, load_dataset, malformed_messages
from .trainer.bootstrap import bootstrap_model
from .trainer.store import LabelStore
from .trainer.training import TrainingData, fit_mnp

__all__ = ["manage_labels", "manage_models", "replay_file", "train_offline"]


def replay_file(settings: Settings, path: Path, *, topic: str | None = None, rate: float = 0.0,
                limit: int | None = None, contaminate: float = 0.0, id_prefix: str = "ev") -> int:
    """Stream a dataset file as events, ``contaminate`` of extra malformed messages mixed in."""
    topic = topic or settings.kafka.events_topic
    ensure_topics(settings.kafka, {topic: settings.kafka.n_partitions})
    dataset = load_dataset(path)
    X = dataset.X[:limit] if limit else dataset.X
    producer = build_producer(settings.kafka)
    bad = malformed_messages(int(round(contaminate * len(X))), dataset.feature_names)
    bad_at = set(np.linspace(0, len(X), num=len(bad), endpoint=False).astype(int).tolist()) if bad else set()
    interval = 1.0 / rate if rate > 0 else 0.0
    started = time.monotonic()
    bad_iter = iter(bad)
    for i, (key, value, _) in enumerate(encode_events(X, dataset.feature_names, id_prefix=id_prefix)):
        if i in bad_at:
            producer.send(topic, value=next(bad_iter))
        producer.send(topic, key=key, value=value)
        if interval:
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    producer.flush()
    producer.close()
    print(f"replayed {len(X)} events (+{len(bad)} malformed) to {topic} in {time.monotonic() - started:.1f} s")
    return 0


def train_offline(settings: Settings, path: Path, *, n_labelled: int = 10, max_rows: int = 20_000,
                  register: bool = False, promote: bool = False, seed: int = 0) -> int:
    """Fit MNP on a file (``n_labelled`` of its y=1 rows labelled, the rest unlabelled) and optionally
    register it; the first registered model is promoted even without ``promote``."""
    dataset = load_dataset(path)
    rng = np.random.default_rng(seed)
    n = min(len(dataset.X), max_rows)
    rows = rng.choice(len(dataset.X), n, replace=False)
    X = dataset.X[rows]
    y = dataset.y[rows] if dataset.y is not None else np.zeros(n, dtype=np.int64)
    anomaly_rows = np.flatnonzero(y == 1)[:n_labelled]
    unlabelled = np.ones(n, dtype=bool)
    unlabelled[anomaly_rows] = False
    data = TrainingData(X_unlabelled=X[unlabelled], X_anomalies=X[anomaly_rows],
                        X_normals=np.empty((0, X.shape[1]), np.float32), feature_names=dataset.feature_names)
    detector = fit_mnp(data, random_state=seed)
    model = bootstrap_model(detector, data.X_unlabelled, alert_budget=settings.trainer.alert_budget,
                            summary={**data.summary(), "source": str(path)},
                            registry=build_registry(settings) if register else None, note="protoguard train",
                            promote="always" if promote else "if_first", reason="cli" if promote else "first model")
    print(json.dumps({"threshold": model.threshold, **data.summary()}))
    if model.version is not None:
        print(f"registered version {model.version}")
        if model.promoted:
            print(f"promoted version {model.version}")
    return 0


def manage_models(settings: Settings, action: str, version: str | None = None) -> int:
    """``list`` | ``show [VERSION]`` | ``promote VERSION`` | ``rollback`` on the model registry."""
    registry = build_registry(settings)
    console = Console()
    if action == "list":
        current = registry.current_version()
        table = Table(title="models")
        for col in ("version", "status", "detector", "created", "parent", "auc_pr", "note"):
            table.add_column(col)
        for info in registry.versions():
            mark = " *" if info.version == current else ""
            table.add_row(info.version + mark, info.status, info.detector, info.created_at, info.parent_version or "",
                          str(info.metrics.get("candidate_auc_pr", "")), info.note)
        console.print(table)
        return 0
    if action == "show":
        version = version or registry.current_version()
        if version is None:
            console.print("no model registered")
            return 1
        print(registry.manifest(version).model_dump_json(indent=2))
        return 0
    if action == "promote":
        if not version:
            console.print("promote needs a VERSION")
            return 2
        previous = registry.promote(version, reason="cli")
        console.print(f"promoted {version} (was {previous})")
        return 0
    restored = registry.rollback(reason="cli")
    console.print(f"rolled back to {restored}")
    return 0


def manage_labels(settings: Settings, action: str, event_ids: list[str]) -> int:
    """The operator's side of the gate's trust: pinned (trusted) labels and quarantined ones."""
    store = LabelStore(build_redis(settings.redis), prefix=settings.redis.prefix)
    if action == "show":
        print(json.dumps({"pinned": store.pinned(), "quarantined": store.quarantined()}, indent=2))
        return 0
    if not event_ids:
        print(f"protoguard labels {action}: give one or more EVENT_IDs", file=sys.stderr)
        return 2
    changed = {"pin": store.pin, "unpin": store.unpin, "release": store.release}[action](event_ids)
    print(f"{action}: {changed} of {len(event_ids)} changed")
    return 0
