"""The demo report renders from plain data: every plot and table is present, text is escaped,
and missing data (no anomalies, no rounds) yields notes instead of exceptions."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from protoguard.demo.report import DemoReport, RoundRecord, VersionQuality, write_report

PNGS = ["quality.png", "alerts.png", "weights.png", "map.png"]


def synthetic_report(seed: int = 0, *, with_anomalies: bool = True) -> DemoReport:
    """A small report shaped like the demo's: 3 versions (one rejected), 4 rounds, random pool and map."""
    rng = np.random.default_rng(seed)
    versions = [
        VersionQuality("v1", 0, "promoted", 0.41, 0.38, {"decision": "promote", "reason": "first model"}),
        VersionQuality("v2", 1, "rejected", 0.35, 0.30,
                       {"decision": "reject", "reason": "AUC-PR fell by 0.06 (> 0.02 allowed)", "delta": -0.06}),
        VersionQuality("v3", 2, "champion", 0.67, 0.61, {"decision": "promote", "reason": "AUC-PR +0.26"}),
    ]
    rounds = [
        RoundRecord(1, "v1", 2000, 40, 15, 20, 1),
        RoundRecord(2, "v1", 2000, 40, 17, 20, 2),
        RoundRecord(3, "v3", 2000, 40, 29, 20, 0),
        RoundRecord(4, "v3", 2000, 40, 31, 20, 1),
    ]
    n_normal, n_anomaly = 400, (30 if with_anomalies else 0)
    events = np.concatenate([rng.normal(0.0, 1.0, (n_normal, 2)), rng.normal(3.5, 0.7, (n_anomaly, 2))])
    return DemoReport(
        title="Protoguard demo <synthetic>",
        settings={"seed": seed, "contamination": 0.05, "alert budget": "2 %",
                  "note": "<script>alert('x')</script>"},
        versions=versions,
        rounds=rounds,
        iforest_auc_pr=0.33,
        iforest_precision_at_budget=0.29,
        pool_weights_normal=rng.beta(8, 2, n_normal).astype(np.float32),
        pool_weights_anomaly=rng.beta(2, 8, n_anomaly).astype(np.float32),
        map_events=events.astype(np.float32),
        map_is_anomaly=np.arange(len(events)) >= n_normal,
        map_prototypes=rng.normal(0.0, 0.8, (5, 2)).astype(np.float32),
    )


def _check_pngs(out: Path) -> None:
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert len(data) > 5_000, f"{name} is suspiciously small ({len(data)} bytes)"


def test_write_report_writes_html_and_plots(tmp_path: Path) -> None:
    path = write_report(synthetic_report(), tmp_path / "report")
    assert path == tmp_path / "report" / "index.html"
    text = path.read_text(encoding="utf-8")
    for name in PNGS:
        assert f'src="{name}"' in text
    _check_pngs(path.parent)
    for version in ("v1", "v2", "v3"):
        assert f"<td>{version}</td>" in text
    assert "AUC-PR fell by 0.06" in text  # the gate's reason reaches the table


def test_text_is_escaped_and_page_is_self_contained(tmp_path: Path) -> None:
    text = write_report(synthetic_report(), tmp_path).read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "Protoguard demo &lt;synthetic&gt;" in text
    assert not re.search(r"(https?:)?//", text.replace("file://", "")), "no external URLs"


def test_no_anomalies_does_not_raise(tmp_path: Path) -> None:
    path = write_report(synthetic_report(with_anomalies=False), tmp_path)
    _check_pngs(path.parent)


def test_empty_report_does_not_raise(tmp_path: Path) -> None:
    empty = np.zeros(0, dtype=np.float32)
    report = DemoReport(title="empty", settings={}, versions=[], rounds=[], iforest_auc_pr=float("nan"),
                        iforest_precision_at_budget=float("nan"), pool_weights_normal=empty,
                        pool_weights_anomaly=empty, map_events=empty, map_is_anomaly=np.zeros(0, dtype=bool),
                        map_prototypes=empty)
    text = write_report(report, tmp_path).read_text(encoding="utf-8")
    assert "No model versions were trained" in text
    for name in PNGS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_map_shape_mismatch_is_reported(tmp_path: Path) -> None:
    report = synthetic_report()
    bad = DemoReport(**{**report.__dict__, "map_is_anomaly": report.map_is_anomaly[:-1]})
    with pytest.raises(ValueError, match="map_is_anomaly"):
        write_report(bad, tmp_path)
