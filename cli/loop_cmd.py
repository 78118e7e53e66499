"""``protoguard labels`` and ``protoguard trainer``: the two processes of the label loop."""
from __future__ import annotations

import argparse

from ..schemas.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    labels = sub.add_parser("labels", help="consume analysts' labels (no action), or pin / unpin / release / show "
                                           "labels the promotion gate trusts or quarantined")
    labels.add_argument("action", nargs="?", choices=["pin", "unpin", "release", "show"], default=None,
                        help="pin: vouch for these events' labels (the gate measures on them, training does not use "
                             "them); unpin: undo; release: return quarantined labels to training; show: list both sets")
    labels.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    labels.add_argument("--exit-when-idle-s", type=float, default=None,
                        help="stop after this many seconds without labels (batch jobs, tests)")
    labels.set_defaults(handler=run_labels)

    trainer = sub.add_parser("trainer", help="retrain on a schedule and on new labels; gate and promote")
    trainer.add_argument("--once", choices=["schedule", "labels", "manual"], default=None,
                         help="run one trigger now (if due and the lock is free) and exit")
    trainer.set_defaults(handler=run_trainer)


def run_labels(args: argparse.Namespace, settings: Settings) -> int:
    if args.action is not None:
        from ..operations import manage_labels

        return manage_labels(settings, args.action, args.event_ids)
    from ..services import run_label_consumer

    return run_label_consumer(settings, exit_when_idle_s=args.exit_when_idle_s)


def run_trainer(args: argparse.Namespace, settings: Settings) -> int:
    from ..services import run_trainer as run

    return run(settings, once=args.once)
