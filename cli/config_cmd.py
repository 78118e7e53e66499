"""``protoguard config show | validate``: what the processes will run with."""
from __future__ import annotations

import argparse

from ..schemas.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("config", help="show or validate the effective configuration")
    parser.add_argument("action", choices=["show", "validate"])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Loading already validated everything (main() turns a ConfigError into exit 2).
    if args.action == "show":
        print(settings.model_dump_json(indent=2))
    else:
        print("configuration is valid")
    return 0
