"""The benchmark harness writes results.csv/md/png, resumes, and records failed fits as rows."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from protoguard.benchmarks import harness
from protoguard.benchmarks.harness import RESULT_COLUMNS, read_results, run_benchmark, run_one, subsample_train
from protoguard.benchmarks.protocol import split_reference
from protoguard.benchmarks.report import mean_ranks, paired_difference, summarise, write_report
from protoguard.cli.main import main


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """600 normals and 60 off-manifold anomalies: enough for a 1 % label (one anomaly) and a test part."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (600, 5)), rng.normal(4, 0.5, (60, 5))]).astype(np.float32)
    y = np.r_[np.zeros(600), np.ones(60)].astype(np.int64)
    path = tmp_path / "data" / "tiny.npz"
    path.parent.mkdir()
    np.savez(path, X=X, y=y)
    return path


def test_run_writes_csv_markdown_and_png(tiny_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_benchmark([tiny_npz], ["iforest", "hgb"], [1, 2], out)
    rows = read_results(out / "results.csv")
    with (out / "results.csv").open() as fh:
        assert tuple(next(csv.reader(fh))) == RESULT_COLUMNS
    assert len(rows) == 4 and {r["method"] for r in rows} == {"iforest", "hgb"}
    assert all(r["contamination"] == "natural" and r["n_labelled"] == "1" and not r["error"] for r in rows)
    assert min(r["auc_roc"] for r in rows if r["method"] == "iforest") > 0.95
    md = (out / "results.md").read_text()
    assert "| tiny |" in md and "Mean rank" in md and "AUC-PR (average precision)" in md
    assert (out / "auc_pr.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_skips_rows_already_done(tiny_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_benchmark([tiny_npz], ["iforest"], [1], out)
    run_benchmark([tiny_npz], ["iforest", "hgb"], [1, 2], out)
    keys = [(r["method"], r["seed"]) for r in read_results(out / "results.csv")]
    assert sorted(keys) == [("hgb", 1), ("hgb", 2), ("iforest", 1), ("iforest", 2)]


def test_contamination_levels_are_separate_rows(tiny_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_benchmark([tiny_npz], ["hgb"], [1], out, contaminations=[0.0, 0.05])
    rows = read_results(out / "results.csv")
    assert [r["contamination"] for r in rows] == ["0", "0.05"]
    assert int(rows[0]["n_train"]) < int(rows[1]["n_train"])  # 0 % drops every unlabelled anomaly
    assert "## Contamination: 0.05" in (out / "results.md").read_text()


def test_failed_fit_becomes_a_row_with_the_error(tiny_npz: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    class Broken:
        def fit(self, X: object, y: object) -> Broken:
            raise RuntimeError("boom")

    monkeypatch.setattr(harness, "build_method", lambda name, seed, **_: Broken())
    row = run_one(split_reference(tiny_npz), "devnet", 3)
    assert row["error"] == "RuntimeError: boom" and math.isnan(row["auc_pr"])
    assert "boom" in capsys.readouterr().err


def test_subsample_keeps_labelled_anomalies(tiny_npz: Path) -> None:
    split = split_reference(tiny_npz)
    small = subsample_train(split, 100, random_state=0)
    assert len(small.X_train) == 100 and small.semi_y.sum() == split.semi_y.sum()
    assert subsample_train(split, None, random_state=0) is split


def test_mean_ranks_put_failed_methods_last() -> None:
    rows = [
        {"contamination": "natural", "dataset": "d", "method": m, "seed": 1, "auc_pr": v, "auc_pr_trapz": v,
         "auc_roc": v, "fit_s": 1.0, "error": "" if math.isfinite(v) else "x"}
        for m, v in (("a", 0.9), ("b", 0.5), ("c", math.nan))
    ]
    assert mean_ranks(summarise(rows), "auc_pr") == {"a": 1.0, "b": 2.0, "c": 3.0}


def test_cli_bench(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-out"
    code = main(["bench", "--datasets", "all", "--methods", "iforest", "--seeds", "5", "--out", str(out),
                 "--data-dir", str(tiny_npz.parent), "--max-rows", "200"])
    assert code == 0 and "results.md" in capsys.readouterr().out
    assert read_results(out / "results.csv")[0]["n_train"] == "200"


def test_cli_rejects_unknown_method(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--methods", "nope", "--data-dir", str(tiny_npz.parent), "--out", str(tmp_path)])
    assert code == 2 and "unknown ['nope']" in capsys.readouterr().err


def test_mean_ranks_rank_a_partial_method_against_the_full_ones() -> None:
    def row(dataset: str, method: str, value: float) -> dict[str, object]:
        return {"contamination": "natural", "dataset": dataset, "method": method, "seed": 1, "auc_pr": value,
                "auc_pr_trapz": value, "auc_roc": value, "fit_s": 1.0, "error": ""}

    rows = [row("d1", "a", 0.9), row("d1", "b", 0.5), row("d2", "a", 0.1), row("d2", "b", 0.2), row("d1", "c", 0.7)]
    assert mean_ranks(summarise(rows), "auc_pr") == {"a": 1.5, "b": 1.5, "c": 2.0}


def test_evaluate_on_val_scores_the_validation_part_and_refuses_mnp_reference(tiny_npz: Path) -> None:
    split = split_reference(tiny_npz)
    test_row = run_one(split, "iforest", 1)
    val_row = run_one(split, "iforest", 1, evaluate_on="val")
    assert test_row["auc_pr"] != val_row["auc_pr"]  # a different part was scored (same fitted model)
    with pytest.raises(ValueError, match="early-stops on the validation part"):
        run_one(split, "mnp-reference", 1, evaluate_on="val")


def test_cli_refuses_mnp_reference_on_val(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--data-dir", str(tiny_npz.parent), "--methods", "mnp-reference", "--seeds", "1",
                 "--evaluate-on", "val", "--out", str(tmp_path / "o")])
    assert code != 0 and "mnp-reference early-stops" in capsys.readouterr().err


def _rows(values: dict[tuple[str, str, int], float], contamination: str = "0.1") -> list[dict[str, object]]:
    return [{"contamination": contamination, "dataset": d, "method": m, "seed": s, "auc_pr": v, "auc_pr_trapz": v,
             "auc_roc": v, "fit_s": 1.0, "error": ""} for (d, m, s), v in values.items()]


def test_paired_difference_reads_the_two_methods_seed_by_seed_on_common_ground() -> None:
    """Per seed: mean over the common datasets of on - off; a dataset or seed only one ran is left out."""
    values = {("d1", "on", 1): 0.6, ("d2", "on", 1): 0.4, ("d1", "off", 1): 0.5, ("d2", "off", 1): 0.4,
              ("d1", "on", 2): 0.7, ("d2", "on", 2): 0.5, ("d1", "off", 2): 0.5, ("d2", "off", 2): 0.4,
              ("d1", "on", 3): 0.9,                       # seed 3: off never ran it, so it cannot be paired
              ("d3", "on", 1): 0.0, ("d3", "on", 2): 0.0}  # d3: off never ran it
    paired = paired_difference(summarise(_rows(values)), "on", "off")
    assert paired is not None
    # seed 1: (0.1 + 0.0) / 2 = 0.05; seed 2: (0.2 + 0.1) / 2 = 0.15 -> mean 0.10, population std 0.05
    assert (paired.n_seeds, paired.n_datasets, paired.n_wins) == (2, 2, 2)
    assert paired.mean == pytest.approx(0.10) and paired.std == pytest.approx(0.05)
    assert paired.beats_spread
    noisy = {**values, ("d1", "on", 2): 0.2}  # seed 2 now loses: (-0.3 + 0.1) / 2 = -0.10
    worse = paired_difference(summarise(_rows(noisy)), "on", "off")
    assert worse is not None and worse.mean == pytest.approx(-0.025) and not worse.beats_spread
    assert paired_difference(summarise(_rows(values)), "on", "absent") is None


def test_report_adds_the_paired_table_and_keeps_a_provenance_comment(tmp_path: Path) -> None:
    values = {(d, m, s): v + (0.1 if m == "on" else 0.0) + 0.01 * s
              for d, v in (("d1", 0.5), ("d2", 0.3)) for m in ("on", "off") for s in (1, 2, 3)}
    csv_path = tmp_path / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for row in _rows(values):
            writer.writerow({**row, "n_train": 10, "n_labelled": 1, "score_s": 0.1})
    (tmp_path / "results.md").write_text("<!-- how these rows were made -->\n# old tables\n")
    md_path, _ = write_report(csv_path, tmp_path, paired_baseline="off")
    md = md_path.read_text()
    assert md.startswith("<!-- how these rows were made -->\n# Benchmark results")
    assert "# old tables" not in md
    assert "### Paired against off" in md and "| on | +0.1000 ± 0.0000 | 3 | 2 | 3 of 3 | yes |" in md
    assert "Paired against" not in write_report(csv_path, tmp_path)[0].read_text()


def test_cli_rejects_an_unknown_paired_baseline(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--methods", "iforest", "--paired-baseline", "nope", "--data-dir", str(tiny_npz.parent),
                 "--out", str(tmp_path)])
    assert code == 2 and "--paired-baseline: unknown 'nope'" in capsys.readouterr().err
