"""The report's figures: one PNG per view, drawn with matplotlib's Agg canvas (no display,
imported only when a report is written). `stages.report` gathers the numbers and the page."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LOSS_TERMS = ("loss", "rec", "var", "cov")

def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", dpi=100)


def _log_y(ax: Any) -> None:
    """Log y axis labelled with plain numbers (also between decades when the range is
    narrow), not 2.4x10^1-style mathtext on every minor tick."""
    from matplotlib.ticker import LogFormatter
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def plot_loss(metrics: dict[int, list[dict[str, Any]]], path: Path) -> None:
    fig = _figure(12, 6.2)
    axes = fig.subplots(2, 2).ravel()
    for ax, term in zip(axes, LOSS_TERMS):
        positive = True
        drawn = False
        for layer, rows in metrics.items():
            pts = [(r["step"], r[term]) for r in rows
                   if isinstance(r.get(term), (int, float)) and np.isfinite(r[term])]
            if not pts:
                continue
            x, y = zip(*pts)
            positive &= min(y) > 0
            ax.plot(x, y, marker="." if len(x) < 50 else None, label=f"layer {layer}")
            drawn = True
        if drawn and positive:
            _log_y(ax)
        ax.set_title(term if drawn else f"{term} (not recorded)")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=9)
    fig.suptitle("LRGI loss terms per layer")
    _save(fig, path)


def plot_probe(results: list[dict[str, Any]], path: Path) -> None:
    fig = _figure(10, 4)
    ax = fig.subplots()
    metrics = sorted({str(r.get("metric", "score")) for r in results})
    for metric in metrics:
        rows = sorted((r for r in results if str(r.get("metric", "score")) == metric),
                      key=lambda r: r["layer"])
        x = [int(r["layer"]) for r in rows]
        ax.errorbar(x, [r["test_mean"] for r in rows],
                    yerr=[r.get("test_std") or 0.0 for r in rows], marker="o", capsize=4,
                    label=f"test {metric}")
        if all("val_mean" in r for r in rows):
            ax.errorbar(x, [r["val_mean"] for r in rows],
                        yerr=[r.get("val_std") or 0.0 for r in rows], marker="s", capsize=4,
                        linestyle="--", alpha=0.7, label=f"val {metric}")
    layers = sorted({int(r["layer"]) for r in results})
    ax.set_xticks(layers, [("0 (features)" if lay == 0 else str(lay)) for lay in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel(", ".join(metrics))
    ax.set_title("linear probe per layer (mean ± std over splits)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_degrees(degs: np.ndarray, counts: np.ndarray, path: Path) -> None:
    fig = _figure(12, 4)
    a, b = fig.subplots(1, 2)
    pos = degs > 0
    a.loglog(degs[pos], counts[pos], ".", markersize=4)
    a.set_xlabel("in-degree")
    a.set_ylabel("nodes")
    zero = int(counts[degs == 0].sum())
    a.set_title(f"in-degree histogram ({zero} nodes of in-degree 0 not shown)")
    a.grid(True, which="both", alpha=0.3)
    n = counts.sum()
    ccdf = (n - np.concatenate([[0], np.cumsum(counts)[:-1]])) / n   # P(D >= d)
    b.loglog(degs[pos], ccdf[pos], drawstyle="steps-post")
    b.set_xlabel("in-degree d")
    b.set_ylabel("P(in-degree ≥ d)")
    b.set_title("complementary CDF")
    b.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def plot_stages(stages: list[tuple[str, dict[str, Any]]], path: Path) -> list[str]:
    """Bars of `seconds` and `peak_rss_mb` per stage; returns the notes for absent fields."""
    panels = [(field, label) for field, label in (("seconds", "wall time (s)"),
                                                  ("peak_rss_mb", "peak RSS (MiB)"))
              if any(isinstance(r.get(field), (int, float)) for _, r in stages)]
    notes = [f"no stage records {label.split(' (')[0]} ({field})"
             for field, label in (("seconds", "wall time (s)"), ("peak_rss_mb", "peak RSS (MiB)"))
             if (field, label) not in panels]
    names = [n for n, _ in stages]
    fig = _figure(12 if len(panels) == 2 else 8, max(2.5, 0.32 * len(names) + 1.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (field, label) in zip(axes, panels):
        vals = [float(r[field]) if isinstance(r.get(field), (int, float)) else 0.0
                for _, r in stages]
        y = np.arange(len(names))
        ax.barh(y, vals, color="tab:blue" if field == "seconds" else "tab:orange")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.set_title(label.split(" (")[0] + " per stage")
        ax.grid(True, axis="x", alpha=0.3)
        for yi, v, (_, r) in zip(y, vals, stages):
            ax.text(v, yi, f" {v:.3g}" if field in r else " n/a", va="center", fontsize=8)
    _save(fig, path)
    return notes


def plot_embeddings(stats: list[dict[str, Any]], path: Path) -> None:
    fig = _figure(12, 4)
    a, b = fig.subplots(1, 2)
    x = [s["layer"] for s in stats]
    labels = [("0 (features)" if lay == 0 else str(lay)) for lay in x]
    a.plot(x, [s["mean_cosine"] for s in stats], marker="o")
    a.set_title("mean pairwise cosine similarity (higher: more oversmoothed)")
    b.plot(x, [s["effective_rank"] for s in stats], marker="o", color="tab:green")
    b.set_title("effective rank (lower: fewer directions used)")
    for ax in (a, b):
        ax.set_xticks(x, labels)
        ax.set_xlabel("layer")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"embedding statistics on {stats[0]['rows']} sampled nodes")
    _save(fig, path)


# --------------------------------------------------------------------------- page
