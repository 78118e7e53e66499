"""``protoguard score`` (one scorer, or ``--workers N`` of them) and ``protoguard replay``: flags only."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..schemas.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    score = sub.add_parser("score", help="run one scorer (a consumer-group member on the events topic)")
    score.add_argument("--exit-when-idle-s", type=float, default=None,
                       help="stop after this many seconds without records (batch jobs, tests)")
    score.add_argument("--workers", type=int, default=1,
                       help="consumer-group members to run as processes on this host (one metrics endpoint for all)")
    score.add_argument("--status-file", type=Path, default=None, help=argparse.SUPPRESS)  # set by --workers' parent
    score.set_defaults(handler=run_score)

    replay = sub.add_parser("replay", help="stream a dataset file (npz/CSV) as events onto a topic")
    replay.add_argument("file", type=Path)
    replay.add_argument("--topic", default=None, help="default: kafka.events_topic")
    replay.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    replay.add_argument("--limit", type=int, default=None)
    replay.add_argument("--contaminate", type=float, default=0.0,
                        help="share of extra malformed messages mixed in (dead-letter testing)")
    replay.add_argument("--id-prefix", default="ev")
    replay.set_defaults(handler=run_replay)


def run_score(args: argparse.Namespace, settings: Settings) -> int:
    from ..services import run_scorer

    return run_scorer(settings, workers=args.workers, exit_when_idle_s=args.exit_when_idle_s,
                      status_file=args.status_file, config=args.config, log_level=args.log_level)


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from ..operations import replay_file

    return replay_file(settings, args.file, topic=args.topic, rate=args.rate, limit=args.limit,
                       contaminate=args.contaminate, id_prefix=args.id_prefix)
