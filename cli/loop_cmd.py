"""``protoguard labels`` and ``protoguard trainer``: the two processes of the label loop."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from ..schemas.settings import Settings
from ..stream.clients import build_redis, ensure_topics
from ..trainer.store import LabelStore
from .clients_from_settings import label_worker_from_settings, trainer_from_settings
from .score_cmd import topic_partitions

__all__ = ["register"]

log = logging.getLogger("protoguard.loop")


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
        return manage_labels(args.action, args.event_ids, settings)
    ensure_topics(settings.kafka, topic_partitions(settings))
    worker = label_worker_from_settings(settings)
    worker.install_signal_handlers()
    log.info("label consumer up: group %s, topic %s", settings.kafka.labels_group, settings.kafka.labels_topic)
    limit = args.exit_when_idle_s
    worker.run(until=(lambda: worker.idle_s() > limit) if limit is not None else None)
    return 0


def manage_labels(action: str, event_ids: list[str], settings: Settings) -> int:
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


def run_trainer(args: argparse.Namespace, settings: Settings) -> int:
    service = trainer_from_settings(settings)
    if args.once is not None:
        outcome = service.trigger(args.once)
        print(outcome.decision if outcome else "not due / lock held")
        return 0

    def stop(*_: Any) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run_forever()
    return 0
