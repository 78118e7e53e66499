"""``protoguard demo``: flags only; the demo itself is ``protoguard.demo.label_loop_demo``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..schemas.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="run the pipeline and its label loop end to end on the local stack")
    parser.add_argument("--data", type=Path, default=None, help="dataset file (default: the bundled UNSW-NB15 sample)")
    parser.add_argument("--n-train", type=int, default=3000, help="rows of the first (contaminated) training sample")
    parser.add_argument("--n-labelled", type=int, default=10, help="labelled attacks among them")
    parser.add_argument("--rounds", type=int, default=4, help="analyst rounds")
    parser.add_argument("--events-per-round", type=int, default=3000)
    parser.add_argument("--analyst-budget", type=int, default=60, help="alerts the analyst answers per round")
    parser.add_argument("--analyst-error", type=float, default=0.0, help="probability an answer is wrong")
    parser.add_argument("--audit-share", type=float, default=0.5,
                        help="share of the analyst budget spent on random unalerted events")
    parser.add_argument("--n-eval", type=int, default=4000, help="rows of the evaluation segment (never streamed)")
    parser.add_argument("--contamination", type=float, default=None,
                        help="resample so this share of every segment is attacks (default: the data's own, ~10%%)")
    parser.add_argument("--weighting", dest="weighting_rule", choices=("adaptive", "rank", "spec", "off"), default="adaptive",
                        help="MNP's likelihood weighting: adaptive (default), rank (s_max and reconstruction together), the spec's mild form, or off")
    parser.add_argument("--no-weighting", action="store_true", help="ablation: the same as --weighting off")
    parser.add_argument("--report", type=Path, default=Path("demo-report"), help="folder for index.html and plots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running afterwards")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..demo.label_loop_demo import DemoOptions, run_demo  # torch, sklearn, matplotlib: only when run

    fields = {f.name for f in dataclasses.fields(DemoOptions)}
    return run_demo(DemoOptions(**{name: value for name, value in vars(args).items() if name in fields}), settings)
