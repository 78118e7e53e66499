"""The demo's report: what the label loop achieved, as an HTML page with PNG plots.

The demo (``label_loop_demo.py``) fills a :class:`DemoReport`; :func:`write_report` renders it.
Rendering is kept apart from the demo so it can be tested without the stack.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["DemoReport", "RoundRecord", "VersionQuality", "write_report"]


@dataclass(frozen=True)
class VersionQuality:
    """One model version, scored offline on the demo's fixed evaluation segment of the stream."""

    version: str
    round: int  # the analyst round after which it was trained (0 = the first model)
    status: str  # "promoted" | "rejected" | "champion"
    auc_pr: float
    precision_at_budget: float  # precision of the top alert-budget share of the evaluation segment
    gate: dict[str, Any] = field(default_factory=dict)  # what the promotion gate measured and decided


@dataclass(frozen=True)
class RoundRecord:
    """One analyst round: events streamed, alerts raised, labels answered."""

    round: int
    model_version: str  # the version that scored this round's events
    n_events: int
    n_alerts: int
    n_true_alerts: int  # alerts whose event is a true anomaly
    n_labels: int  # labels the simulated analyst sent this round
    n_wrong_labels: int  # of which the analyst got wrong (configured error rate)


@dataclass(frozen=True)
class DemoReport:
    """Everything the report shows; arrays are plain numpy."""

    title: str
    settings: dict[str, Any]  # demo parameters shown in a small table (seed, contamination, budgets...)
    versions: list[VersionQuality]
    rounds: list[RoundRecord]
    iforest_auc_pr: float  # unsupervised reference fitted on the same first sample
    iforest_precision_at_budget: float
    pool_weights_normal: npt.NDArray[np.float32]  # likelihood weights of true normals in the pool
    pool_weights_anomaly: npt.NDArray[np.float32]  # ... and of the hidden anomalies in it
    map_events: npt.NDArray[np.float32]  # (n, 2) events projected to 2-D (PCA of MNP embeddings)
    map_is_anomaly: npt.NDArray[np.bool_]  # (n,) truth of those events
    map_prototypes: npt.NDArray[np.float32]  # (K, 2) prototypes in the same projection


# --- rendering ----------------------------------------------------------------------------------

_STATUS_CLASSES = {"champion": "champion", "promoted": "promoted", "rejected": "rejected"}
_METRIC_COLOURS = {"auc_pr": "#1f77b4", "precision_at_budget": "#ff7f0e"}
_DPI = 110


def _figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free figure: no global registry to leak into, nothing to close, no display needed."""
    return Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")


def _note(ax: Axes, text: str) -> None:
    """Say on the plot itself why something is missing, so a blank area is not mistaken for a bug."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="#555555",
            bbox={"boxstyle": "round", "facecolor": "#f4f4f4", "edgecolor": "#cccccc"})


def _finite(x: float) -> bool:
    return bool(np.isfinite(x))


def _fmt(x: float, digits: int = 3) -> str:
    """Metrics can be NaN (e.g. no anomaly in a segment): show that plainly instead of 'nan'."""
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def _plot_quality(report: DemoReport, path: Path) -> None:
    """Bars per version against the unsupervised reference: the gap is what the labels bought."""
    versions = report.versions
    fig = _figure(max(9.0, 1.1 * len(versions) + 3.0), 4.6)
    ax = fig.add_subplot()
    metrics = [("auc_pr", "AUC-PR", report.iforest_auc_pr),
               ("precision_at_budget", "precision@budget", report.iforest_precision_at_budget)]
    width = 0.38
    x = np.arange(len(versions))
    handles: list[Any] = []
    for j, (attr, name, reference) in enumerate(metrics):
        colour = _METRIC_COLOURS[attr]
        values = np.array([getattr(v, attr) for v in versions], dtype=float)
        rejected = np.array([v.status == "rejected" for v in versions], dtype=bool)
        if len(versions):
            bars = ax.bar(x + (j - 0.5) * width, np.nan_to_num(values, nan=0.0), width, color=colour,
                          edgecolor=colour, label=name)
            for bar, is_rejected in zip(bars, rejected):
                if is_rejected:  # grey + hatch: still comparable, but obviously not served
                    bar.set_facecolor("#d9d9d9")
                    bar.set_hatch("///")
            ax.bar_label(bars, labels=[_fmt(v, 2) for v in values], fontsize=7, padding=2,
                         bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
            handles.append(bars)
        if _finite(reference):
            handles.append(ax.axhline(reference, color=colour, linestyle="--", linewidth=1.4,
                                      label=f"Isolation Forest {name} ({reference:.2f})"))
    if versions:
        ax.set_xticks(x, [f"{v.version}\nround {v.round}" for v in versions], fontsize=8)
        for xi, v in zip(x, versions):  # status just above the pair of bars, clear of the value labels
            top = np.nan_to_num(np.array([v.auc_pr, v.precision_at_budget], dtype=float), nan=0.0).max()
            ax.text(xi, min(float(top), 1.0) + 0.1, v.status, ha="center", va="bottom", fontsize=8,
                    color="#888888" if v.status == "rejected" else "#222222",
                    fontweight="bold" if v.status == "champion" else "normal")
        if any(v.status == "rejected" for v in versions):
            handles.append(Patch(facecolor="#d9d9d9", edgecolor="#555555", hatch="///", label="rejected by the gate"))
    else:
        ax.set_xticks([])
        _note(ax, "no model versions were trained")
    ax.set_ylim(0, 1.3)  # headroom for status labels and the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score on the evaluation segment")
    ax.set_title("Quality of each model version vs the unsupervised Isolation Forest reference", fontsize=10)
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper center", ncol=3, frameon=False,
                  bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)


def _plot_alerts(report: DemoReport, path: Path) -> None:
    """Stacked alerts per round next to the labels answered: does precision rise as labels arrive?"""
    rounds = report.rounds
    fig = _figure(max(9.0, 0.55 * len(rounds) + 3.0), 4.4)
    ax = fig.add_subplot()
    if not rounds:
        ax.set_xticks([])
        ax.set_yticks([])
        _note(ax, "no analyst rounds were run")
        fig.savefig(path)
        return
    x = np.array([r.round for r in rounds])
    true_alerts = np.array([r.n_true_alerts for r in rounds])
    false_alerts = np.array([max(0, r.n_alerts - r.n_true_alerts) for r in rounds])
    labels = np.array([r.n_labels for r in rounds])
    wrong = np.array([r.n_wrong_labels for r in rounds])
    ax.bar(x, true_alerts, 0.6, color="#d62728", label="alerts: true anomalies")
    ax.bar(x, false_alerts, 0.6, bottom=true_alerts, color="#bdbdbd", label="alerts: false alarms")
    ax.plot(x, labels, color="#222222", marker="o", linewidth=1.5, label="labels answered")
    if wrong.any():
        ax.plot(x, wrong, color="#9467bd", marker="x", linestyle=":", linewidth=1.2, label="of which wrong")
    top = float(max(int((true_alerts + false_alerts).max()), int(labels.max()), 1))
    # The serving version is marked where it starts serving, so a jump in precision can be tied to a model.
    previous = None
    for r in rounds:
        if r.model_version != previous:
            if previous is not None:
                ax.axvline(r.round - 0.5, color="#1f77b4", linestyle=":", linewidth=1)
            ax.text(r.round - 0.45, top * 1.12, f"serving {r.model_version}", fontsize=7, color="#1f77b4",
                    ha="left", va="bottom", rotation=0 if len(rounds) <= 8 else 45)
            previous = r.model_version
    ax.set_ylim(0, top * 1.45)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("analyst round")
    ax.set_ylabel("events")
    ax.set_title("Alerts per round (true anomalies vs false alarms) and labels answered", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=4, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)


def _plot_weights(report: DemoReport, path: Path) -> None:
    """Anomalies hidden in the pool should get low likelihood weights: the two histograms show it."""
    fig = _figure(9.0, 4.2)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 31)
    drawn = 0
    missing: list[str] = []
    for name, weights, colour in [("true normals", report.pool_weights_normal, "#7f7f7f"),
                                  ("hidden anomalies", report.pool_weights_anomaly, "#d62728")]:
        w = np.asarray(weights, dtype=float).ravel()
        w = w[np.isfinite(w)]
        if w.size == 0:
            missing.append(name)
            continue
        ax.hist(np.clip(w, 0.0, 1.0), bins=bins, density=True, color=colour, alpha=0.55, edgecolor=colour,
                label=f"{name}: n={w.size}, mean={w.mean():.3f}")
        drawn += 1
    ax.set_xlim(0, 1)
    ax.set_xlabel("likelihood weight in the training pool")
    ax.set_ylabel("density")
    ax.set_title("Likelihood weights: true normals vs hidden anomalies", fontsize=10)
    if drawn:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom so the legend and note never cover a bar
        ax.legend(fontsize=8, loc="upper center", frameon=True, framealpha=0.9, bbox_to_anchor=(0.5, 0.93))
        if missing:
            ax.text(0.5, 0.97, "none in the pool: " + ", ".join(missing), transform=ax.transAxes, ha="center",
                    va="top", fontsize=8, color="#555555")
    else:
        ax.set_yticks([])
        _note(ax, "the training pool is empty")
    fig.savefig(path)


def _points(array: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """Accept an empty array of any shape as 'no points'; anything else must be (n, 2)."""
    a = np.asarray(array, dtype=float)
    if a.size == 0:
        return a.reshape(0, 2)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {a.shape}")
    return a


def _plot_map(report: DemoReport, path: Path) -> None:
    """Where events and prototypes sit: anomalies should fall away from the prototypes."""
    events = _points(report.map_events, "map_events")
    is_anomaly = np.asarray(report.map_is_anomaly, dtype=bool).ravel()
    if is_anomaly.size != len(events):
        raise ValueError(f"map_is_anomaly has {is_anomaly.size} entries for {len(events)} map_events")
    prototypes = _points(report.map_prototypes, "map_prototypes")
    fig = _figure(9.0, 6.5)
    ax = fig.add_subplot()
    normals, anomalies = events[~is_anomaly], events[is_anomaly]
    if len(normals):
        ax.scatter(normals[:, 0], normals[:, 1], s=5, color="#9e9e9e", alpha=0.5, linewidths=0,
                   label=f"normal events ({len(normals)})")
    if len(anomalies):
        ax.scatter(anomalies[:, 0], anomalies[:, 1], s=14, color="#d62728", alpha=0.8, linewidths=0,
                   label=f"anomalies ({len(anomalies)})")
    if len(prototypes):
        ax.scatter(prototypes[:, 0], prototypes[:, 1], s=180, marker="*", color="#1f77b4", edgecolors="black",
                   linewidths=0.8, zorder=3, label=f"prototypes ({len(prototypes)})")
        for k, (px, py) in enumerate(prototypes):
            ax.annotate(str(k), (px, py), xytext=(6, 6), textcoords="offset points", fontsize=8, zorder=4,
                        fontweight="bold", color="#0b3c6e")
    notes = []
    if not len(anomalies):
        notes.append("no anomalies among the mapped events")
    if not len(prototypes):
        notes.append("no prototypes")
    if not len(events) and not len(prototypes):
        _note(ax, "nothing to map")
    elif notes:
        ax.text(0.98, 0.02, "; ".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                color="#555555")
    if len(events) or len(prototypes):
        ax.legend(fontsize=8, loc="upper left", frameon=True, framealpha=0.85)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title("Events and prototypes in 2-D (PCA of the MNP embeddings)", fontsize=10)
    fig.savefig(path)


_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; color: #222;
       margin: 0; background: #fafafa; }
main { max-width: 1060px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 0.3em; }
h2 { font-size: 1.15em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #e0e0e0; padding-bottom: 0.2em; }
p.intro { color: #444; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.rejected td { color: #888; background: repeating-linear-gradient(135deg, #fff, #fff 6px, #f3f3f3 6px, #f3f3f3 12px); }
tr.champion td { font-weight: 600; }
tr.total td { border-top: 2px solid #bbb; font-weight: 600; }
td.detail { font-size: 0.85em; color: #555; max-width: 320px; word-break: break-word; }
figure { margin: 1.2em 0 1.8em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
"""

_PLOTS: list[tuple[str, str, Any]] = [
    ("quality.png", "Model quality",
     "Each version's AUC-PR and precision at the alert budget; the dashed lines are the unsupervised Isolation "
     "Forest: bars above them are what the analysts' labels bought, hatched grey bars were rejected by the gate."),
    ("alerts.png", "Alerts and labels per round",
     "The red share of each bar is the alert precision; look for it to grow after a new version starts serving."),
    ("weights.png", "Likelihood weights in the training pool",
     "Hidden anomalies (red) should sit at lower weights than the true normals (grey): that is how "
     "contaminated traffic is kept from teaching the model."),
    ("map.png", "Map of events and prototypes",
     "Prototypes (numbered stars) should sit in the grey normal mass, with the red anomalies away from them."),
]


def _cell(value: Any, numeric: bool = False) -> str:
    text = html.escape(str(value))
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def _table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _settings_html(settings: dict[str, Any]) -> str:
    if not settings:
        return "<p>No settings recorded.</p>"
    return _table(["setting", "value"], [f"<tr>{_cell(k)}{_cell(v)}</tr>" for k, v in settings.items()])


def _versions_html(versions: list[VersionQuality]) -> str:
    if not versions:
        return "<p>No model versions were trained.</p>"
    rows = []
    for v in versions:
        gate = dict(v.gate)
        decision = gate.pop("decision", "")
        reason = gate.pop("reason", "")
        detail = ", ".join(f"{k}={_fmt(x) if isinstance(x, float) else x}" for k, x in gate.items())
        css = _STATUS_CLASSES.get(v.status, "other")
        rows.append(f'<tr class="{css}">{_cell(v.version)}{_cell(v.round, True)}{_cell(v.status)}'
                    f"{_cell(_fmt(v.auc_pr), True)}{_cell(_fmt(v.precision_at_budget), True)}"
                    f'{_cell(decision)}{_cell(reason)}<td class="detail">{html.escape(detail)}</td></tr>')
    return _table(["version", "round", "status", "AUC-PR", "precision@budget", "gate decision", "gate reason",
                   "gate measurements"], rows)


def _rounds_html(rounds: list[RoundRecord]) -> str:
    if not rounds:
        return "<p>No analyst rounds were run.</p>"

    def row(cells: list[tuple[Any, bool]], css: str = "") -> str:
        attr = f' class="{css}"' if css else ""
        return f"<tr{attr}>" + "".join(_cell(c, n) for c, n in cells) + "</tr>"

    def precision(true: int, alerts: int) -> str:
        return f"{true / alerts:.2f}" if alerts else "—"

    rows = [row([(r.round, True), (r.model_version, False), (r.n_events, True), (r.n_alerts, True),
                 (r.n_true_alerts, True), (r.n_alerts - r.n_true_alerts, True),
                 (precision(r.n_true_alerts, r.n_alerts), True), (r.n_labels, True), (r.n_wrong_labels, True)])
            for r in rounds]
    tot = {f: sum(getattr(r, f) for r in rounds)
           for f in ("n_events", "n_alerts", "n_true_alerts", "n_labels", "n_wrong_labels")}
    rows.append(row([("total", False), ("", False), (tot["n_events"], True), (tot["n_alerts"], True),
                     (tot["n_true_alerts"], True), (tot["n_alerts"] - tot["n_true_alerts"], True),
                     (precision(tot["n_true_alerts"], tot["n_alerts"]), True), (tot["n_labels"], True),
                     (tot["n_wrong_labels"], True)], "total"))
    return _table(["round", "serving version", "events", "alerts", "true anomalies", "false alarms",
                   "alert precision", "labels answered", "wrong labels"], rows)


def _headline(report: DemoReport) -> str:
    """One sentence with the answer most readers come for: did labels beat the unsupervised reference?"""
    served = [v for v in report.versions if v.status != "rejected" and _finite(v.auc_pr)]
    if not served:
        return ""
    best = max(served, key=lambda v: v.auc_pr)
    return (f" The best accepted version, {best.version} (round {best.round}), reaches AUC-PR {_fmt(best.auc_pr)} "
            f"and precision@budget {_fmt(best.precision_at_budget)}, against {_fmt(report.iforest_auc_pr)} and "
            f"{_fmt(report.iforest_precision_at_budget)} for the Isolation Forest.")


def _html(report: DemoReport) -> str:
    intro = ("What the label loop achieved: each model version's quality on the fixed evaluation segment "
             "against an unsupervised Isolation Forest, the alerts and labels of each analyst round, how the "
             "likelihood weights keep hidden anomalies out of training, and where the prototypes sit."
             + _headline(report))
    figures = "\n".join(
        f'<h2>{html.escape(heading)}</h2>\n<figure><img src="{html.escape(name)}" alt="{html.escape(heading)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, heading, caption in _PLOTS)
    title = html.escape(report.title)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p class="intro">{html.escape(intro)}</p>
<h2>Settings</h2>
{_settings_html(report.settings)}
<h2>Model versions</h2>
{_versions_html(report.versions)}
<h2>Analyst rounds</h2>
{_rounds_html(report.rounds)}
{figures}
</main>
</body>
</html>
"""


def write_report(report: DemoReport, out_dir: Path) -> Path:
    """Write ``index.html`` and its four PNGs into ``out_dir`` (created if needed); return the HTML path.

    The PNGs sit beside the HTML under fixed names so the folder can be copied or served as a whole.
    The HTML is written last, so a page that exists never points at a plot that failed to render.
    Raises ``ValueError`` if the map arrays have inconsistent shapes (empty arrays are fine).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    renderers = {"quality.png": _plot_quality, "alerts.png": _plot_alerts, "weights.png": _plot_weights,
                 "map.png": _plot_map}
    for name, _, _ in _PLOTS:
        renderers[name](report, out / name)
    path = out / "index.html"
    path.write_text(_html(report), encoding="utf-8")
    return path
