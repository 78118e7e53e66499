"""Entry point of the ``protoguard`` console script.

Each subcommand lives in its own module with ``register(subparsers)``; this file only wires
them. Settings are loaded here, once, and handed to the command as a value.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..schemas.errors import ProtoguardError
from ..schemas.settings import load_settings

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Subcommand modules, in help order. Each defines ``register(subparsers)``.
COMMAND_MODULES = ("demo_cmd", "stack_cmd", "config_cmd", "score_cmd", "loop_cmd", "model_cmd", "bench_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protoguard", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (env PROTOGUARD_* overrides it)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        # A command module that does not import is a broken install, never a command to hide. The
        # modules import only argparse and settings; what a command runs is imported when it runs,
        # so `protoguard --help` does not load torch, scikit-learn or matplotlib.
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )
    # kafka-python logs every connection attempt at INFO/ERROR; keep it to warnings and worse
    # unless the user asked for debug output.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL if logging.getLogger().level >= logging.ERROR else logging.WARNING)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per job run otherwise
    try:
        settings = load_settings(args.config)
        return int(args.handler(args, settings) or 0)
    except ProtoguardError as exc:
        print(f"protoguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
