"""``protoguard stack up [--secure] | down | status | wipe``: the embedded local Kafka + Redis stack.

``up`` starts only what is not running and never deletes data, so it is also how a crashed Redis
or broker is brought back; ``wipe`` is the one action that deletes data, and only when both are
stopped.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from ..schemas.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("stack", help="start, stop, inspect or wipe the local Kafka + Redis stack")
    parser.add_argument("action", choices=["up", "down", "status", "wipe"],
                        help="up: start whichever service is not running (data kept); down: stop both (data kept); "
                             "status: each service's pid and state; wipe: delete all data (both must be stopped)")
    parser.add_argument("--secure", action="store_true",
                        help="up: Kafka over SASL_SSL (SCRAM-SHA-512) and Redis over TLS with an ACL user; "
                             "writes the matching client settings to <run_dir>/secure/protoguard.toml")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..deploy.secure_stack import SecureLocalStack
    from ..deploy.stack import LocalStack

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
        print("stopped (data kept; `protoguard stack wipe` deletes it)" if stopped else "nothing to stop")
        return 0
    if args.action == "wipe":
        removed = stack.wipe()
        print("\n".join(f"removed {path}" for path in removed) or "nothing to remove")
        return 0
    states = stack.services()
    print(json.dumps({name: {"pid": st.pid, "running": st.is_running} for name, st in states.items()}, indent=2))
    return 0 if all(st.is_running for st in states.values()) else 1
