"""``protoguard stack up [--secure] | down | status``: the embedded local Kafka + Redis stack."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from ..deploy.secure_stack import SecureLocalStack
from ..deploy.stack import LocalStack
from ..schemas.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("stack", help="start, stop or inspect the local Kafka + Redis stack")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--secure", action="store_true",
                        help="up: Kafka over SASL_SSL (SCRAM-SHA-512) and Redis over TLS with an ACL user; "
                             "writes the matching client settings to <run_dir>/secure/protoguard.toml")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stack = (SecureLocalStack if args.secure else LocalStack)(settings.stack)
    if args.action == "up":
        started = time.monotonic()
        info = stack.up()
        print(json.dumps({**asdict(info), "wall_s": round(time.monotonic() - started, 2)}, indent=2))
        if info.client_config:
            print(f"client settings: protoguard --config {info.client_config} <command>")
        return 0
    if args.action == "down":
        stopped = stack.down()
        print("stopped" if stopped else "nothing to stop")
        return 0
    info = stack.status()
    if info is None:
        print("down")
        return 1
    print(json.dumps(asdict(info), indent=2))
    return 0
