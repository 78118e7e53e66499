"""``protoguard labels`` and ``protoguard trainer``: the two processes of the label loop."""
from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from ..schemas.settings import Settings
from ..stream.clients import ensure_topics
from .clients_from_settings import label_worker_from_settings, trainer_from_settings
from .score_cmd import topic_partitions

__all__ = ["register"]

log = logging.getLogger("protoguard.loop")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    labels = sub.add_parser("labels", help="consume analysts' labels, join them with event features, store them")
    labels.add_argument("--exit-when-idle-s", type=float, default=None,
                        help="stop after this many seconds without labels (batch jobs, tests)")
    labels.set_defaults(handler=run_labels)

    trainer = sub.add_parser("trainer", help="retrain on a schedule and on new labels; gate and promote")
    trainer.add_argument("--once", choices=["schedule", "labels", "manual"], default=None,
                         help="run one trigger now (if due and the lock is free) and exit")
    trainer.set_defaults(handler=run_trainer)


def run_labels(args: argparse.Namespace, settings: Settings) -> int:
    ensure_topics(settings.kafka, topic_partitions(settings))
    worker = label_worker_from_settings(settings)
    worker.install_signal_handlers()
    log.info("label consumer up: group %s, topic %s", settings.kafka.labels_group, settings.kafka.labels_topic)
    limit = args.exit_when_idle_s
    worker.run(until=(lambda: worker.idle_s() > limit) if limit is not None else None)
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
