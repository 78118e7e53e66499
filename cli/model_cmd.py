"""``protoguard model list | show VERSION | promote VERSION | rollback`` and ``protoguard train``: flags only."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..schemas.settings import Settings

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
    from ..operations import manage_models

    return manage_models(settings, args.action, args.version)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from ..operations import train_offline

    return train_offline(settings, args.data, n_labelled=args.n_labelled, max_rows=args.max_rows,
                         register=args.register, promote=args.promote, seed=args.seed)
