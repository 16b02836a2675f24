"""`lrgi-ooc report STORE --out DIR`: a static HTML page with PNG figures of a store's training.

Everything is read through `GraphStore` (stage records, run dirs, arrays), so the page shows
what the pipeline recorded, not what it was asked to do. The page is self-contained: plain
HTML, inline CSS, relative PNG paths; nothing is fetched from the network, so it opens from
a cluster's shared filesystem or an archived run alike. The report is built in a temporary
directory beside `out` and renamed into place, so a reader never sees half a report.

Figures (each omitted, with a one-line note, when its data is absent):
- loss terms (loss, rec, var, cov) over steps per layer, from `train/<l>`'s metrics.jsonl;
- the linear probe's metric per layer (layer 0: raw features), from evaluate's results.json;
- the in-degree distribution (log-log), streamed from indptr in bounded blocks;
- wall time and peak RSS per stage, from the stage records;
- mean pairwise cosine similarity and effective rank per layer on a fixed node sample
  (the oversmoothing view); these numbers also go into a table and `report.json`.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.stages import report_figures as figures
from lrgi_ooc.stages.inspect import degree_counts
from lrgi_ooc.store.layout import INDPTR, GraphStore, train_stage

SAMPLE_SIZE = 2000       # nodes in the embedding-statistics sample
SAMPLE_SEED = 0          # fixed: reports of the same store compare layer by layer
INDEX = "index.html"
JSON_NAME = "report.json"


# --------------------------------------------------------------------------- data
def sample_nodes(num_nodes: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted ids of min(size, N) distinct nodes, the same for every layer and every run
    (a seeded draw): the statistics of layer l and l+1 then describe the same nodes."""
    k = min(int(size), int(num_nodes))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(int(num_nodes), size=k, replace=False)).astype(np.int64)


def sample_rows(store: GraphStore, layer: int, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of table `layer` (0: the features) as float64 [k, D]: only their pages
    are read (a memory map indexed by sorted ids)."""
    x = np.asarray(store.table(layer)[np.asarray(ids, dtype=np.int64)])
    return x.reshape(len(x), -1).astype(np.float64)


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cos(x_i, x_j) over ordered pairs i != j, rows of norm 0 left out:
    sum_{i != j} cos = ||sum_i x_i / |x_i| ||^2 - n (O(nD), no n x n matrix)."""
    norm = np.linalg.norm(x, axis=1)
    keep = norm > 0
    n = int(keep.sum())
    if n < 2:
        return float("nan")
    s = (x[keep] / norm[keep, None]).sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy of the singular values normalised to sum 1) of the (uncentred) sample
    matrix (Roy & Vetterli 2007): near 1 when all rows collapse onto one direction."""
    s = np.linalg.svd(x, compute_uv=False)
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_stats(store: GraphStore, ids: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per table (layer 0 = features, then every layer table): sample size, width, mean
    pairwise cosine similarity and effective rank, all on the same node sample."""
    if ids is None:
        ids = sample_nodes(store.num_nodes)
    layers = ([0] if store.has(store.table_key(0)) else []) + store.layers()
    out = []
    for layer in layers:
        x = sample_rows(store, layer, ids)
        out.append({"layer": layer, "rows": int(len(x)), "dim": int(x.shape[1]),
                    "mean_cosine": mean_pairwise_cosine(x), "effective_rank": effective_rank(x)})
    return out


def degree_histogram(store: GraphStore) -> tuple[np.ndarray, np.ndarray]:
    """(degrees, node counts) of the in-degree distribution, streamed from indptr in blocks:
    a dense histogram for degrees < 65536 plus the few large degrees (at most E / 65536)."""
    hist, large = degree_counts(store, "report: degrees")
    degs = np.flatnonzero(hist)
    counts = hist[degs]
    if len(large):
        ud, uc = np.unique(large, return_counts=True)
        degs, counts = np.concatenate([degs, ud]), np.concatenate([counts, uc])
    return degs.astype(np.int64), counts.astype(np.int64)


def _run_file(store: GraphStore, stage: str, name: str) -> Path | None:
    """`name` in the stage's run dir, or None; a run dir that `run_dir` had to create (empty)
    is removed again, so reporting leaves nothing behind beside the store."""
    d = store.run_dir(stage)
    f = d / name
    if f.is_file():
        return f
    for p in (d, d.parent):
        try:
            p.rmdir()          # only succeeds when empty
        except OSError:
            break
    return None


def train_metrics(store: GraphStore) -> dict[int, list[dict[str, Any]]]:
    """Layer -> its metrics.jsonl rows, for each recorded `train/<l>` stage (unreadable
    lines, e.g. the last line of a killed run, are skipped)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for name in store.stages():
        tail = name.rpartition("/")[2]
        if not (tail.isdigit() and name == train_stage(int(tail))):
            continue
        f = _run_file(store, name, "metrics.jsonl")
        if f is None:
            continue
        rows = []
        for line in f.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
        if rows:
            out[int(tail)] = rows
    return dict(sorted(out.items()))


def probe_results(store: GraphStore) -> list[dict[str, Any]] | None:
    """evaluate's results.json (a list of per-layer dicts), or None when absent/unreadable."""
    f = _run_file(store, "evaluate", "results.json")
    if f is None:
        return None
    try:
        res = json.loads(f.read_text())
    except ValueError:
        return None
    if not isinstance(res, list):
        return None
    res = [r for r in res if isinstance(r, dict) and "layer" in r and "test_mean" in r]
    return res or None


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0; background: #f6f7f9; color: #1d2330; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
.sub { color: #5b6475; margin: 0 0 16px; font-size: 14px; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #d5d9e0; border-radius: 6px; padding: 10px 18px;
        min-width: 140px; }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { font-size: 13px; color: #5b6475; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #d5d9e0; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef0f4; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.cfg { max-width: 560px; color: #5b6475; font-family: ui-monospace, Menlo, monospace;
         font-size: 12px; overflow-wrap: anywhere; }
figure { margin: 12px 0; background: #fff; border: 1px solid #d5d9e0; border-radius: 6px;
         padding: 8px; }
figure img { display: block; width: auto; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 13px; color: #5b6475; padding: 6px 4px 0; }
p.note { color: #8a5a00; background: #fff6e0; border: 1px solid #f0d9a0; border-radius: 4px;
         padding: 6px 10px; font-size: 14px; }
"""

# Counts the images that loaded (tools/render_report.py reads the result from the DOM).
_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.imagesBroken = bad.map(function (i) {
    return i.getAttribute("src"); }).join(" ");
  document.body.dataset.imagesLoaded = String(ok.length);
});
</script>
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, spec: str = ".4g") -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else format(float(v), spec)
    return str(v)


def _table(head: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """rows: lists of (css class, already escaped cell html)."""
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' for c, v in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _config_summary(cfg: Any, limit: int = 240) -> str:
    if not isinstance(cfg, dict):
        return ""
    s = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in cfg.items())
    return s if len(s) <= limit else s[:limit - 1] + "…"


class _Page:
    """Sections of HTML plus the figures and notes that report.json lists."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        self.figures: list[str] = []
        self.notes: list[str] = []

    def h2(self, title: str) -> None:
        self.parts.append(f"<h2>{_esc(title)}</h2>")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.parts.append(f'<p class="note">{_esc(text)}</p>')

    def figure(self, name: str, caption: str, alt: str) -> None:
        self.figures.append(name)
        self.parts.append(f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}">'
                          f"<figcaption>{_esc(caption)}</figcaption></figure>")

    def html(self, s: str) -> None:
        self.parts.append(s)


def _stage_rows(stages: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, str]]]:
    rows = []
    for name, r in stages:
        cfg = r.get("config")
        rows.append([("", _esc(name)), ("", _esc(r.get("completed_at", ""))),
                     ("n", _esc(_fmt(r.get("seconds"), ".3g"))),
                     ("n", _esc(_fmt(r.get("peak_rss_mb"), ".5g"))),
                     ("cfg", f'<span title="{_esc(json.dumps(cfg, default=str))}">'
                             f"{_esc(_config_summary(cfg))}</span>")])
    return rows


def _build(store: GraphStore, out: Path) -> dict[str, Any]:
    """Write the figures and index.html into `out` (an empty directory); return report.json."""
    meta = store.meta
    page = _Page(out)
    layers = store.layers()
    counts = {"nodes": store.num_nodes, "edges": meta.get("num_edges"),
              "features": meta.get("num_features", 0), "layers": len(layers)}
    stage_recs = sorted(store.stages().items(), key=lambda kv: str(kv[1].get("completed_at", "")))

    # header
    cards = "".join(f'<div class="card"><div class="v">{_esc(_fmt(v))}</div>'
                    f'<div class="k">{_esc(k)}</div></div>' for k, v in counts.items())
    extra = []
    if meta.get("num_classes") is not None:
        extra.append(f"{meta['num_classes']} classes")
    if meta.get("symmetrized") is not None:
        extra.append("symmetrized" if meta["symmetrized"] else "directed")
    page.html(f"<h1>lrgi-ooc report</h1>"
              f'<p class="sub">{_esc(store.path.resolve())} · {_esc(", ".join(extra))}'
              f" · generated {_esc(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'))}"
              f'</p><div class="cards">{cards}</div>')

    # stages
    page.h2("Stages")
    if stage_recs:
        page.html(_table(["stage", "completed at", "seconds", "peak RSS (MiB)", "config"],
                         _stage_rows(stage_recs)))
    else:
        page.note("no stage has completed")

    # loss
    page.h2("Training loss")
    metrics = train_metrics(store)
    if metrics:
        figures.plot_loss(metrics, out / "loss.png")
        page.figure("loss.png", "loss terms (total, reconstruction, variance, covariance) over "
                    "training steps, one line per layer, from each train/<l> run's metrics.jsonl",
                    "loss terms per layer")
    else:
        page.note("no training metrics: no train/<l> stage recorded a metrics.jsonl")

    # probe
    page.h2("Linear probe")
    results = probe_results(store)
    if results:
        figures.plot_probe(results, out / "probe.png")
        page.figure("probe.png", "linear-probe score per layer with ± one standard deviation "
                    "over splits; layer 0 is the raw features (evaluate's results.json)",
                    "linear probe per layer")
        page.html(_table(["layer", "metric", "test mean", "test std", "val mean", "val std",
                          "splits"],
                         [[("n", _esc(r["layer"])), ("", _esc(r.get("metric", ""))),
                           ("n", _esc(_fmt(r.get("test_mean")))),
                           ("n", _esc(_fmt(r.get("test_std")))),
                           ("n", _esc(_fmt(r.get("val_mean")))),
                           ("n", _esc(_fmt(r.get("val_std")))),
                           ("n", _esc(_fmt(r.get("num_splits"))))] for r in results]))
    else:
        page.note("no linear-probe results: evaluate has not written results.json "
                  "(`lrgi-ooc run` writes it)")

    # degrees
    page.h2("In-degree distribution")
    degree: dict[str, Any] | None = None
    if store.has(INDPTR) and store.num_nodes > 0:
        degs, cnts = degree_histogram(store)
        total = int((degs * cnts).sum())
        degree = {"min": int(degs[0]), "max": int(degs[-1]), "mean": total / int(cnts.sum()),
                  "zero_degree": int(cnts[degs == 0].sum()), "distinct_degrees": int(len(degs))}
        if (degs > 0).any():
            figures.plot_degrees(degs, cnts, out / "degree.png")
            page.figure("degree.png", f"in-degree (edges into a node) on log-log axes: min "
                        f"{degree['min']}, mean {degree['mean']:.2f}, max {degree['max']}",
                        "in-degree distribution")
        else:
            page.note("every node has in-degree 0: no distribution to plot")
    else:
        page.note("the store has no CSR (indptr)")

    # stage cost
    page.h2("Stage cost")
    if any(isinstance(r.get(f), (int, float)) for _, r in stage_recs
           for f in ("seconds", "peak_rss_mb")):
        for n in figures.plot_stages(stage_recs, out / "stages.png"):
            page.note(n)
        page.figure("stages.png", "wall time and peak RSS (of the process that ran the stage; "
                    "Dask workers not included) from the stage records", "stage cost")
    else:
        page.note("no stage records its wall time (seconds) or peak RSS (peak_rss_mb)")

    # embedding statistics
    page.h2("Embedding statistics (oversmoothing)")
    stats: list[dict[str, Any]] = []
    ids = sample_nodes(store.num_nodes)
    if len(ids):
        stats = embedding_stats(store, ids)
    if stats:
        figures.plot_embeddings(stats, out / "embeddings.png")
        page.figure("embeddings.png", f"on the same {len(ids)} nodes (seed {SAMPLE_SEED}) for "
                    "every table: mean pairwise cosine similarity over pairs i ≠ j and "
                    "effective rank exp(H(σ / Σσ)) of the sample matrix",
                    "embedding statistics per layer")
        page.html(_table(["layer", "table", "rows", "dim", "mean cosine", "effective rank"],
                         [[("n", _esc(s["layer"])),
                           ("", "features" if s["layer"] == 0 else "embeddings"),
                           ("n", _esc(_fmt(s["rows"]))), ("n", _esc(_fmt(s["dim"]))),
                           ("n", _esc(_fmt(s["mean_cosine"], ".4f"))),
                           ("n", _esc(_fmt(s["effective_rank"], ".2f")))] for s in stats]))
    else:
        page.note("no tables to describe: the store has neither features nor layer tables")

    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>lrgi-ooc report: {_esc(store.path.name)}</title><style>{_CSS}</style>"
           "</head><body><main>" + "\n".join(page.parts) + "</main>" + _SCRIPT +
           "</body></html>\n")
    (out / INDEX).write_text(doc, encoding="utf-8")
    return {"store": str(store.path.resolve()), "counts": counts,
            "stages": {n: {k: r.get(k) for k in ("completed_at", "seconds", "peak_rss_mb")}
                       for n, r in stage_recs},
            "probe": results or [], "in_degree": degree,
            "embedding_stats": {"sample_size": int(len(ids)), "seed": SAMPLE_SEED,
                                "layers": stats},
            "figures": page.figures, "notes": page.notes}


def _replaceable(out: Path) -> bool:
    """Only an earlier report (or an empty directory) is replaced, never arbitrary data."""
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return not names or {INDEX, JSON_NAME} <= names


def write_report(store: str | Path, out: str | Path) -> Path:
    """Write `out/index.html` (+ PNGs, report.json), replacing an earlier report at `out`
    atomically; returns the path of index.html."""
    gs = GraphStore(store)                 # InputError when it is not a store
    out = Path(out).absolute()
    if out.exists() and not _replaceable(out):
        raise InputError(f"{out}: exists and is not a report directory (no {INDEX} and "
                         f"{JSON_NAME}); choose another --out")
    if out.resolve() == gs.path.resolve() or gs.path.resolve() in out.resolve().parents:
        raise InputError(f"{out}: the report cannot be written inside the store")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        doc = _build(gs, tmp)
        (tmp / JSON_NAME).write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "r")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / INDEX


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return str(o)
