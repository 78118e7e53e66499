"""Does MNP's likelihood weighting pay off in the label loop? The demo with weighting on vs off.

Runs ``protoguard demo`` (the whole pipeline on the local stack: first model, analyst rounds,
retrains through the gate) once per hidden contamination x seed x weighting, reads each run's
``summary.json`` and reports the evaluation-segment AUC-PR before the rounds (first model) and
after them (final champion), mean and spread over seeds.

    python -m protoguard.benchmarks.label_loop_ablation --out bench-out/label-loop
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

__all__ = ["main"]


def _run_one(out: Path, contamination: float, seed: int, weighting: bool, extra: list[str]) -> dict:
    folder = out / f"c{contamination:g}-s{seed}-{'on' if weighting else 'off'}"
    summary = folder / "summary.json"
    if summary.exists():  # resumable: a finished run is not repeated
        return orjson.loads(summary.read_bytes())
    cmd = [sys.executable, "-m", "protoguard.cli.main", "--log-level", "WARNING", "demo", "--report", str(folder),
           "--contamination", str(contamination), "--seed", str(seed), *extra]
    if not weighting:
        cmd.append("--no-weighting")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not summary.exists():
        raise SystemExit(f"demo failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return orjson.loads(summary.read_bytes())


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/label-loop"))
    parser.add_argument("--contaminations", default="0.05,0.10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args, extra = parser.parse_known_args(argv)
    console = Console()
    rows = []
    for c in (float(v) for v in args.contaminations.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            for weighting in (True, False):
                with console.status(f"demo: contamination {c:.0%}, seed {seed}, weighting {'on' if weighting else 'off'}"):
                    rows.append(_run_one(args.out, c, seed, weighting, extra))
    (args.out / "runs.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))

    table = Table(title="label loop: evaluation-segment AUC-PR, mean ± std over seeds")
    for col in ("contamination", "weighting", "first model", "after the rounds", "Isolation Forest", "seeds", "per seed (after)"):
        table.add_column(col)
    lines = ["| contamination | weighting | first model | after the rounds | Isolation Forest | per seed (after) |",
             "|---|---|---|---|---|---|"]
    for c in sorted({r["contamination"] for r in rows}):
        for weighting in (True, False):
            sel = [r for r in rows if r["contamination"] == c and r["weighting"] == weighting]
            before, after = [r["auc_pr_before"] for r in sel], [r["auc_pr_after"] for r in sel]
            iforest = [r["iforest_auc_pr"] for r in sel]
            per_seed = ", ".join(f"{r['seed']}: {r['auc_pr_after']:.3f}" for r in sel)
            cells = [f"{c:.0%}", "on" if weighting else "off", _cell(before), _cell(after), _cell(iforest)]
            table.add_row(*cells, str(len(sel)), per_seed)
            lines.append("| " + " | ".join([*cells, per_seed]) + " |")
    console.print(table)
    if args.markdown is not None:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
