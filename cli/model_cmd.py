"""``protoguard model list | show VERSION | promote VERSION | rollback`` and ``protoguard train``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..schemas.settings import Settings
from ..stream.replay import load_dataset
from ..trainer.training import TrainingData, calibrate, finalize_manifest, fit_mnp
from .clients_from_settings import registry_from_settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    model = sub.add_parser("model", help="list, inspect, promote or roll back registered models")
    model.add_argument("action", choices=["list", "show", "promote", "rollback"])
    model.add_argument("version", nargs="?")
    model.set_defaults(handler=run_model)

    train = sub.add_parser("train", help="fit a model offline from an npz/CSV file (and register it)")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--n-labelled", type=int, default=10,
                       help="how many of the file's y=1 rows are given as labelled anomalies (the rest stay unlabelled)")
    train.add_argument("--max-rows", type=int, default=20_000)
    train.add_argument("--register", action="store_true", help="store the model in the Redis registry")
    train.add_argument("--promote", action="store_true", help="also make it the current model")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=run_train)


def run_model(args: argparse.Namespace, settings: Settings) -> int:
    registry = registry_from_settings(settings)
    console = Console()
    if args.action == "list":
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
    if args.action == "show":
        version = args.version or registry.current_version()
        if version is None:
            console.print("no model registered")
            return 1
        print(registry.manifest(version).model_dump_json(indent=2))
        return 0
    if args.action == "promote":
        if not args.version:
            console.print("promote needs a VERSION")
            return 2
        previous = registry.promote(args.version, reason="cli")
        console.print(f"promoted {args.version} (was {previous})")
        return 0
    restored = registry.rollback(reason="cli")
    console.print(f"rolled back to {restored}")
    return 0


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    dataset = load_dataset(args.data)
    rng = np.random.default_rng(args.seed)
    n = min(len(dataset.X), args.max_rows)
    rows = rng.choice(len(dataset.X), n, replace=False)
    X = dataset.X[rows]
    y = dataset.y[rows] if dataset.y is not None else np.zeros(n, dtype=np.int64)
    anomaly_rows = np.flatnonzero(y == 1)[: args.n_labelled]
    unlabelled = np.ones(n, dtype=bool)
    unlabelled[anomaly_rows] = False
    data = TrainingData(X_unlabelled=X[unlabelled], X_anomalies=X[anomaly_rows],
                        X_normals=np.empty((0, X.shape[1]), np.float32), feature_names=dataset.feature_names)
    detector = fit_mnp(data, random_state=args.seed)
    threshold, calibration = calibrate(detector.score(data.X_unlabelled), alert_budget=settings.trainer.alert_budget)
    weights, manifest = detector.save()
    manifest = finalize_manifest(manifest, threshold=threshold, calibration=calibration,
                                 summary={**data.summary(), "source": str(args.data)})
    print(json.dumps({"threshold": threshold, **data.summary()}))
    if args.register:
        registry = registry_from_settings(settings)
        version = registry.register(weights, manifest, note="protoguard train")
        print(f"registered version {version}")
        if args.promote or registry.current_version() is None:
            registry.promote(version, reason="first model" if not args.promote else "cli")
            print(f"promoted version {version}")
    return 0
