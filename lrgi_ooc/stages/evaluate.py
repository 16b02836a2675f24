"""Linear-probe evaluation (docs/cli.md "evaluate"; protocol in LRGI.md).

The probe must give the same number whether the table fits in memory or not, so there is ONE
training loop fed by either a resident batch or a stream of mini-batches: each epoch sums the
gradient of the full-batch loss over the batches and takes ONE Adam step, the training mean/std
come from a fixed-block float64 pass (identical bits in both modes), and scores are integer
counts summed over batches (ROC-AUC: per-row scores gathered over batches, then ranked).

Probes: `lrgi` is LRGI.md's (no weight decay); `l2` trains one such probe per weight decay of
a grid, in lockstep over the same batches (the features are read and standardised once per
epoch for the whole grid), and keeps the one with the best validation score, so published
figures probed with a tuned weight decay (GraphMAE, BGRL) can be compared like with like.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.progress import bar
from lrgi_ooc.store.layout import GraphStore, train_embeddings_key

_STAT_ROWS = 1 << 16          # block size of the mean/std pass, the same in every mode
_SMALL_BATCH = 1 << 20        # elements of a batch below which torch runs on one thread
PARTS = ("train", "val", "test")
PROBES = ("lrgi", "l2")
METRICS = ("accuracy", "roc_auc", "micro_f1")
# weight decays of the `l2` probe: half decades from 1e-6 to 1e-1 (11 values)
L2_GRID = (1e-6, 3.16e-6, 1e-5, 3.16e-5, 1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1)
# the metrics reported for each kind of label, the first one choosing epoch and weight decay
KIND_METRICS = {"multiclass": ("accuracy",), "binary": ("roc_auc", "accuracy"),
                "multilabel": ("micro_f1",)}


# --------------------------------------------------------------------------- rows and feeds
class _Rows:
    """One part of a split: which rows of a (possibly memory-mapped) table, and their labels."""

    def __init__(self, table: np.ndarray, ids: np.ndarray | None, y: np.ndarray):
        self.table, self.ids, self.y = table, ids, y   # ids None: rows 0 .. len(y)

    @property
    def n(self) -> int:
        return len(self.y)

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, self.n, max(rows, 1)):
            e = min(s + rows, self.n)
            x = self.table[s:e] if self.ids is None else self.table[self.ids[s:e]]
            yield np.asarray(x), self.y[s:e]


class _Concat:
    """Rows of several tables side by side (`--concat`), read lazily like one table."""

    def __init__(self, tables: Sequence[Any]):
        self.tables = list(tables)
        self.shape = (len(self.tables[0]), sum(int(np.prod(t.shape[1:])) for t in self.tables))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        parts = [np.asarray(t[idx]) for t in self.tables]
        return np.hstack([a.reshape(len(a), -1) for a in parts])


class _Take:
    """Rows `ids` of a table as a table of their own (raw features of inductive train rows)."""

    def __init__(self, table: Any, ids: np.ndarray):
        self.table, self.ids = table, ids
        self.shape = (len(ids),) + tuple(table.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        return np.asarray(self.table[self.ids[idx]])


def _moments(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and population std, merged exactly in float64 (Chan et al.)."""
    n, mean, m2 = 0, None, None
    for x, _ in rows.blocks(_STAT_ROWS):
        x = x.reshape(len(x), -1).astype(np.float64)
        k = len(x)
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if n == 0:
            mean, m2 = mb, m2b
        else:
            d, tot = mb - mean, n + k
            mean = mean + d * (k / tot)
            m2 = m2 + m2b + d * d * (n * k / tot)
        n += k
    std = np.sqrt(m2 / n)
    std[std <= 1e-7 * np.maximum(1.0, np.abs(mean))] = 1.0   # constant columns stay put
    return mean.astype(np.float32), std.astype(np.float32)


class _Feed:
    """Standardised (x, y) tensors of one part: one resident batch, or streamed batches."""

    def __init__(self, rows: _Rows, mean: np.ndarray, std: np.ndarray, *, multilabel: bool,
                 device: torch.device, batch_rows: int, resident: bool):
        self.rows, self.mean, self.std = rows, mean, std
        self.multilabel, self.device, self.batch_rows = multilabel, device, batch_rows
        self.n = rows.n
        self._cache = [self._tensors(x, y) for x, y in rows.blocks(rows.n)] if resident else None

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.reshape(len(x), -1).astype(np.float32)      # a fresh copy: standardise in place
        np.subtract(x, self.mean, out=x)
        np.divide(x, self.std, out=x)
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32 if self.multilabel else np.int64))
        return torch.from_numpy(x).to(self.device), yt.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._cache is not None:
            return iter(self._cache)
        return (self._tensors(x, y) for x, y in self.rows.blocks(self.batch_rows))


# --------------------------------------------------------------------------- scores
def _counts(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> np.ndarray:
    """Integer counts that add up over batches: [correct, n] or [tp, fp, fn]."""
    if not multilabel:
        return np.array([int((logits.argmax(1) == y).sum()), len(y)], dtype=np.int64)
    pred, truth = logits > 0, y > 0.5
    tp = int((pred & truth).sum())
    return np.array([tp, int(pred.sum()) - tp, int(truth.sum()) - tp], dtype=np.int64)


def _score(c: np.ndarray, multilabel: bool) -> float:
    """Accuracy, or micro-F1 = 2TP / (2TP + FP + FN) (0 when nothing is positive)."""
    if not multilabel:
        return float(c[0] / c[1]) if c[1] else 0.0
    den = 2 * c[0] + c[1] + c[2]
    return float(2 * c[0] / den) if den else 0.0


def roc_auc(scores: Any, truth: Any) -> float:
    """Area under the ROC curve = P(a random positive scores above a random negative), ties
    counting 1/2 (Mann-Whitney U over average ranks), in exact integer arithmetic; NaN when
    one class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(truth).ravel() > 0.5
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ss = s[order]
    start = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    end = np.r_[start[1:], len(ss)]
    twice_rank = np.empty(len(s), dtype=np.int64)          # 2 x the 1-based average rank
    twice_rank[order] = np.repeat(start + end + 1, end - start)
    twice_u = int(twice_rank[t].sum()) - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * n_neg)


class _Tally:
    """What the metrics need from one part, over batches: counts (summed) and, for ROC-AUC,
    the per-row scores (gathered): the positive-class margin, or each label's logit."""

    def __init__(self, kind: str, metrics: Sequence[str]):
        self.multilabel = kind == "multilabel"
        self.counts = np.zeros(3 if self.multilabel else 2, dtype=np.int64)
        self.auc = "roc_auc" in metrics
        self.scores: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.counts += _counts(logits, y, self.multilabel)
        if self.auc:
            s = logits if self.multilabel else logits[:, 1] - logits[:, 0]
            self.scores.append(s.cpu().numpy())
            self.truth.append(y.cpu().numpy())

    def score(self, metric: str) -> float:
        if metric != "roc_auc":            # micro-F1 of single labels is their accuracy
            return _score(self.counts, self.multilabel)
        s, t = np.concatenate(self.scores), np.concatenate(self.truth)
        if not self.multilabel:
            return roc_auc(s, t)
        per = [roc_auc(s[:, j], t[:, j]) for j in range(s.shape[1])]
        return float(np.nanmean(per))       # labels with one class only are left out (OGB)


@torch.no_grad()
def _evaluate(models: Sequence[torch.nn.Module], feed: _Feed, kind: str,
              metrics: Sequence[str]) -> list[dict[str, float]]:
    """Every model scored over ONE pass of the feed."""
    tallies = [_Tally(kind, metrics) for _ in models]
    for x, y in feed:
        for model, t in zip(models, tallies):
            t.add(model(x), y)
    return [{m: t.score(m) for m in metrics} for t in tallies]


# --------------------------------------------------------------------------- training
def _init_linear(num_features: int, num_classes: int, device: torch.device) -> torch.nn.Linear:
    """Zero weights and bias. The probe is a convex problem stopped early by validation: a
    random start only adds noise that early stopping keeps (on Cora's 140 training rows the
    start alone moved a score by up to 1.8 points); from zero the result is a function of the
    embeddings and the split, as with a logistic regression solver."""
    model = torch.nn.Linear(num_features, num_classes)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return model.to(device)


class _Adam:
    """torch.optim.Adam's CPU arithmetic (single-tensor path, L2 weight decay added to the
    gradient as torch does), written out: the first torch.optim optimiser imports
    torch._dynamo, about 6 s on these machines, which would dominate a small `evaluate`.
    tests/test_probe.py checks it against torch.optim.Adam."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.weight_decay = weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1 ** self.t)
        bc2_sqrt = (1 - b2 ** self.t) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-step_size)


@contextlib.contextmanager
def _threads_for(elements: int) -> Iterator[None]:
    """One thread for small batches: on a busy 2-core machine, intra-op threads spinning on
    tiny matmuls made a Cora-sized probe 10x slower. Big batches keep torch's setting."""
    before = torch.get_num_threads()
    if elements < _SMALL_BATCH:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(train: _Feed, val: _Feed, test: _Feed, *, num_features: int, num_classes: int,
         kind: str, metrics: Sequence[str], epochs: int, lr: float, device: torch.device,
         weight_decays: Sequence[float] = (0.0,), progress: Any = None,
         trace: bool = False) -> dict[str, Any]:
    """Full-batch training, one probe per weight decay; test scored once, with the weights
    of the best-val epoch of the best-val weight decay."""
    with _threads_for(min(train.n, train.batch_rows) * num_features):
        return _fit_loop(train, val, test, num_features=num_features, num_classes=num_classes,
                         kind=kind, metrics=metrics, weight_decays=weight_decays,
                         epochs=epochs, lr=lr, device=device, progress=progress, trace=trace)


def _fit_loop(train: _Feed, val: _Feed, test: _Feed, *, num_features: int, num_classes: int,
              kind: str, metrics: Sequence[str], weight_decays: Sequence[float], epochs: int,
              lr: float, device: torch.device, progress: Any, trace: bool) -> dict[str, Any]:
    # One model and optimiser per weight decay, each doing exactly the operations of a
    # single-model run (a direct fit at that weight decay gives the same bits).
    multilabel = kind == "multilabel"
    models = [_init_linear(num_features, num_classes, device) for _ in weight_decays]
    opts = [_Adam(list(m.parameters()), lr=lr, weight_decay=float(wd))
            for m, wd in zip(models, weight_decays)]
    denom = train.n * (num_classes if multilabel else 1)
    k = len(models)
    best, best_epoch, best_state = [-1.0] * k, [0] * k, [None] * k
    vals: list[list[float]] = [[] for _ in models]
    tests: list[list[float]] = [[] for _ in models]
    primary = metrics[0]
    for epoch in range(1, epochs + 1):
        for opt in opts:
            opt.zero_grad()
        for x, y in train:
            for model in models:
                out = model(x)
                loss = (F.binary_cross_entropy_with_logits(out, y, reduction="sum")
                        if multilabel else F.cross_entropy(out, y, reduction="sum")) / denom
                loss.backward()
        for opt in opts:
            opt.step()
        for g, sc in enumerate(_evaluate(models, val, kind, (primary,))):
            v = sc[primary]
            if v > best[g]:                              # strict: ties keep the earliest
                best[g], best_epoch[g] = v, epoch
                best_state[g] = {n: t.detach().clone() for n, t in models[g].state_dict().items()}
            if trace:
                vals[g].append(v)
        if trace:
            for g, sc in enumerate(_evaluate(models, test, kind, (primary,))):
                tests[g].append(sc[primary])
        if progress is not None:
            progress.update(1)
    # ties between weight decays go to the larger one (the simpler model, as ties between
    # epochs go to the earlier one)
    g = max(range(k), key=lambda i: (best[i], float(weight_decays[i])))
    model = models[g]
    model.load_state_dict(best_state[g])
    te = _evaluate([model], test, kind, metrics)[0]
    va = _evaluate([model], val, kind, metrics[1:])[0] if len(metrics) > 1 else {}
    va[primary] = best[g]
    out = {"val": best[g], "test": te[primary], "epoch": best_epoch[g],
           "weight": model.weight.detach().cpu().numpy(), "bias": model.bias.detach().cpu().numpy(),
           "weight_decay": float(weight_decays[g]), "val_by_weight_decay": list(best),
           "scores": {m: {"val": va[m], "test": te[m]} for m in metrics}}
    if trace:
        out["val_trace"], out["test_trace"] = vals[g], tests[g]
    return out


def _label_kind(multilabel: bool, num_classes: int) -> str:
    return "multilabel" if multilabel else "binary" if num_classes == 2 else "multiclass"


def _metrics(kind: str, metric: str | None, num_classes: int) -> tuple[str, ...]:
    """The reported metrics, the chosen (or the label kind's default) one first."""
    defaults = KIND_METRICS[kind]
    if metric is None:
        return defaults
    check_probe_options("lrgi", metric, False, False)
    if metric == "roc_auc" and kind == "multiclass":
        raise InputError(f"--metric roc_auc: needs binary or multi-label labels, these have "
                         f"{num_classes} classes (use accuracy)")
    if metric == "accuracy" and kind == "multilabel":
        raise InputError("--metric accuracy: needs single-label labels, these are multi-label "
                         "(use micro_f1 or roc_auc)")
    return (metric,) + tuple(m for m in defaults if m != metric)


def check_probe_options(probe: Any, metric: Any, concat: Any, concat_raw: Any,
                        where: str | None = None) -> None:
    """The probe's option values (`where`: a config table, else the flags are named)."""
    def name(opt: str) -> str:
        return f"{where}: {opt}" if where else "--" + opt.replace("_", "-") + ":"
    if probe not in PROBES:
        raise InputError(f"{name('probe')} must be one of {', '.join(PROBES)}, got {probe!r}")
    if metric is not None and metric not in METRICS:
        raise InputError(f"{name('metric')} must be one of {', '.join(METRICS)}, got {metric!r}")
    for opt, v in (("concat", concat), ("concat_raw", concat_raw)):
        if not isinstance(v, bool):
            raise InputError(f"{name(opt)} must be true or false, got {v!r}")


def check_weight_decays(probe: str, weight_decays: Sequence[float] | None,
                        name: str = "--weight-decays") -> tuple[float, ...]:
    """The l2 probe's grid (None: L2_GRID), or the one-line error naming `name` (the flag, or
    a config key): values must be numbers >= 0, and a grid belongs to the l2 probe only."""
    if probe == "lrgi":
        if weight_decays is not None:
            raise InputError(f"{name}: the grid of the l2 probe (with --probe l2 only)")
        return (0.0,)
    if weight_decays is None:
        return L2_GRID
    grid = []
    for w in weight_decays:
        try:
            v = float(w)
        except (TypeError, ValueError):
            v = float("nan")
        if isinstance(w, bool) or not (np.isfinite(v) and v >= 0):
            raise InputError(f"{name}: {w!r} is not a number >= 0")
        grid.append(v)
    if not grid:
        raise InputError(f"{name}: the l2 probe's grid is empty")
    return tuple(grid)


def linear_probe(x_train: Any, y_train: Any, x_val: Any, y_val: Any, x_test: Any, y_test: Any,
                 *, multilabel: bool, epochs: int = 1000, lr: float = 1e-2,
                 device: str | torch.device = "cpu", trace: bool = False,
                 weight_decay: float | Sequence[float] = 0.0,
                 metric: str | None = None) -> dict[str, Any]:
    """In-memory probe on arrays: {"val", "test", "epoch", "weight", "bias", "weight_decay",
    "val_by_weight_decay", "scores"}.

    `epoch` counts optimiser steps (1..epochs); `trace=True` adds per-epoch val/test scores;
    a sequence of weight decays picks one on validation, as the `l2` probe does.
    """
    arr = [np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
           for a in (x_train, y_train, x_val, y_val, x_test, y_test)]
    parts = [_Rows(arr[i], None, arr[i + 1]) for i in (0, 2, 4)]
    num_classes = arr[1].shape[1] if multilabel else int(max(a.max(initial=-1)
                                                             for a in arr[1::2])) + 1
    kind = _label_kind(multilabel, num_classes)
    grid = (weight_decay,) if np.isscalar(weight_decay) else tuple(weight_decay)
    dev = torch.device(device)
    mean, std = _moments(parts[0])
    feeds = [_Feed(p, mean, std, multilabel=multilabel, device=dev, batch_rows=p.n,
                   resident=True) for p in parts]
    return _fit(*feeds, num_features=mean.size, num_classes=num_classes, kind=kind,
                metrics=_metrics(kind, metric, num_classes),
                weight_decays=check_weight_decays("l2", grid),
                epochs=epochs, lr=lr, device=dev, trace=trace)


# --------------------------------------------------------------------------- splits
def random_splits(candidates: np.ndarray, num_splits: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random 10/10/80 splits of `candidates` (train = val = floor(n/10), test = the rest).

    Split k depends only on (seed, k), so adding splits never changes the earlier ones.
    """
    n = len(candidates)
    n_tr = n // 10
    out = []
    for k in range(num_splits):
        perm = np.random.default_rng((int(seed), int(k))).permutation(n)
        pick = [perm[:n_tr], perm[n_tr:2 * n_tr], perm[2 * n_tr:]]
        out.append({p: np.sort(candidates[idx]) for p, idx in zip(PARTS, pick)})
    return out


def _resolve_splits(store: GraphStore, labels: np.ndarray, num_splits: int,
                    seed: int) -> tuple[list[dict[str, np.ndarray]], str]:
    stored = store.splits()
    if stored:
        source = "store" if len(stored) == 1 else "store-multi"
    else:
        labelled = np.arange(len(labels)) if labels.ndim > 1 else np.flatnonzero(labels >= 0)
        stored, source = random_splits(labelled, num_splits, seed), "random-10/10/80"
    n = store.num_nodes
    for k, sp in enumerate(stored):
        for p in PARTS:
            ids = sp[p]
            where = f"{store.path}: split {k}" if len(stored) > 1 else f"{store.path}: split"
            if len(ids) == 0:
                raise InputError(f"{where} has an empty {p} set")
            if ids.min() < 0 or ids.max() >= n:
                raise InputError(f"{where}: {p} holds node ids outside [0, {n})")
            if labels.ndim == 1 and (labels[ids] < 0).any():
                raise InputError(f"{where}: {p} holds unlabelled nodes (label < 0)")
    return stored, source


# --------------------------------------------------------------------------- the store
def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and SAMPLE std (ddof=1) over splits; std 0 for a single split."""
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def probe_layers(layer: int, concat: bool = False, concat_raw: bool = False) -> list[int]:
    """The tables one result probes: [L]; with `concat` layers 1..L side by side; with
    `concat_raw` 0..L (layer 0 alone when L = 0: there is nothing to concatenate)."""
    if not (concat or concat_raw):
        return [layer]
    return list(range(0 if concat_raw or layer == 0 else 1, layer + 1))


def _check_auc(where: str, splits: list[dict[str, np.ndarray]], labels: np.ndarray) -> None:
    """ROC-AUC needs both classes in val and test (one label column, at least, if multi-label)."""
    for k, sp in enumerate(splits):
        for p in ("val", "test"):
            y = labels[sp[p]] > 0
            both = (y.any(0) & ~y.all(0)).any() if y.ndim > 1 else y.any() and not y.all()
            if not both:
                split = f"split {k}" if len(splits) > 1 else "split"
                raise InputError(f"{where}: {split}: {p} holds one class only, ROC-AUC is "
                                 "undefined (use --metric accuracy)")


def evaluate_store(store: GraphStore, layer: int, *, num_splits: int = 5, seed: int = 0,
                   epochs: int = 1000, stream: bool | None = None, memory_limit: int = 2 << 30,
                   batch_rows: int = 65536, device: str | torch.device | None = None,
                   lr: float = 1e-2, weights: bool = False, probe: str = "lrgi",
                   concat: bool = False, concat_raw: bool = False, metric: str | None = None,
                   weight_decays: Sequence[float] | None = None) -> dict[str, Any]:
    """Probe one table of the store (or, with `concat`, several side by side) over its
    split(s), or random 10/10/80 splits.

    Returns the JSON document of docs/cli.md; `weights=True` adds each split's chosen
    weight/bias (numpy) to `per_split`, for comparisons, which makes it non-JSON.
    `weight_decays` is the `l2` probe's grid (None: L2_GRID).
    """
    layer = int(layer)
    if layer < 0:
        raise InputError(f"--layer: must be >= 0, got {layer}")
    if num_splits < 1 or epochs < 1 or batch_rows < 1:
        raise InputError("--num-splits, --epochs and --batch-rows must be >= 1")
    check_probe_options(probe, metric, concat, concat_raw)
    grid = check_weight_decays(probe, weight_decays)
    labels = store.labels()
    if labels is None:
        raise InputError(f"{store.path}: store has no labels: nothing to probe")
    layers = probe_layers(layer, concat, concat_raw)
    for lay in layers:
        if not store.has(store.table_key(lay)):
            raise InputError(f"{store.path}: store has no node features" if lay == 0 else
                             f"{store.path}: layer {lay} table is missing: run "
                             f"`lrgi-ooc embed {store.path} --layer {lay}` first")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device: cuda requested but torch sees no GPU")
    dev = torch.device(device)
    multilabel = labels.ndim > 1
    num_classes = labels.shape[1] if multilabel else max(
        int(store.meta.get("num_classes") or 0), int(labels.max(initial=-1)) + 1)
    kind = _label_kind(multilabel, num_classes)
    metrics = _metrics(kind, metric, num_classes)
    splits, source = _resolve_splits(store, labels, num_splits, seed)
    if "roc_auc" in metrics:
        _check_auc(str(store.path), splits, labels)
    # Sparse id sets (papers100M: 1% of rows) gather better without the kernel's read-around.
    key = store.table_key(layers[0])
    sparse = max(sum(len(sp[p]) for p in PARTS) for sp in splits) < store.info(key).num_rows // 4
    tables = [store.mmap(store.table_key(lay), random_access=sparse) for lay in layers]
    table = tables[0] if len(tables) == 1 else _Concat(tables)
    with_train = [lay for lay in layers if lay > 0 and store.has(train_embeddings_key(lay))]
    inductive = bool(with_train)
    train_table = None
    if inductive:
        if with_train != [lay for lay in layers if lay > 0]:
            raise InputError(f"{store.path}: --concat: layers {with_train} have inductive "
                             "training embeddings, the other layers do not")
        if source != "store":
            raise InputError(f"{store.path}: layer {with_train[0]} has inductive training "
                             "embeddings, which need the store's single split")
        parts = []
        for lay, t in zip(layers, tables):
            if lay == 0:
                parts.append(_Take(t, splits[0]["train"]))
                continue
            tt = store.mmap(train_embeddings_key(lay), random_access=False)
            if tt.shape[0] != len(splits[0]["train"]):
                raise InputError(f"{store.path}: layer {lay} training embeddings have "
                                 f"{tt.shape[0]} rows, split train has "
                                 f"{len(splits[0]['train'])}")
            parts.append(tt)
        train_table = parts[0] if len(parts) == 1 else _Concat(parts)
    num_features = int(np.prod(table.shape[1:]))
    # resident float32 rows of train and val plus, while one part is loaded, its gathered
    # copy; test is scored once, after training, so it always streams (same counts)
    need = max(len(sp["train"]) + len(sp["val"]) for sp in splits) * num_features * 4 * 2
    if stream is None:
        stream = need > memory_limit
    per_split = []
    name = "+".join(map(str, layers))
    with bar(len(splits) * epochs, f"probe ({probe}) layer {name}", unit="epoch") as pb:
        for sp in splits:
            rows = [_Rows(train_table, None, labels[sp["train"]]) if inductive and p == "train"
                    else _Rows(table, sp[p], labels[sp[p]]) for p in PARTS]
            mean, std = _moments(rows[0])
            feeds = [_Feed(r, mean, std, multilabel=multilabel, device=dev,
                           batch_rows=batch_rows, resident=not stream and p != "test")
                     for r, p in zip(rows, PARTS)]
            r = _fit(*feeds, num_features=num_features, num_classes=num_classes, kind=kind,
                     metrics=metrics, weight_decays=grid, epochs=epochs, lr=lr, device=dev,
                     progress=pb)
            keep = ["val", "test", "epoch"]
            keep += ["weight_decay", "val_by_weight_decay"] if probe == "l2" else []
            keep += ["scores"] if len(metrics) > 1 else []
            keep += ["weight", "bias"] if weights else []
            per_split.append({f: r[f] for f in keep})
            del feeds, rows
    summary = {}
    for m in metrics:
        val_mean, val_std = _mean_std([r["val"] if m == metrics[0] else r["scores"][m]["val"]
                                       for r in per_split])
        test_mean, test_std = _mean_std([r["test"] if m == metrics[0] else
                                         r["scores"][m]["test"] for r in per_split])
        summary[m] = {"test_mean": test_mean, "test_std": test_std, "val_mean": val_mean,
                      "val_std": val_std}
    out = {"layer": layer, "layers": layers, "probe": probe, "metric": metrics[0],
           **summary[metrics[0]], "metrics": summary, "label_kind": kind,
           "num_splits": len(splits), "split_source": source, "per_split": per_split,
           "epochs": epochs, "seed": seed, "streamed": bool(stream),
           "inductive": bool(inductive), "std": "sample (ddof=1) over splits; 0 for one split"}
    if probe == "l2":
        out["weight_decay_grid"] = list(grid)
    return out


def run_probe_table(store: GraphStore, layers: list[int], **kw: Any) -> list[dict[str, Any]]:
    """One `evaluate_store` result per layer, e.g. [0, 1, 2] to compare with raw features."""
    return [evaluate_store(store, layer, **kw) for layer in layers]


def format_table(results: list[dict[str, Any]]) -> str:
    """A small fixed-width table, scores in percent, one row per result and metric."""
    head = (f"{'layers':>7}  {'probe':<5} {'metric':<9} {'val (%)':>15} {'test (%)':>15} "
            f"{'splits':>6}  source")
    lines = [head, "-" * len(head)]
    for r in results:
        layers = "+".join(str(v) for v in r.get("layers", [r["layer"]]))
        for metric, s in (r.get("metrics") or {r["metric"]: r}).items():
            val = f"{100 * s['val_mean']:.2f} ± {100 * s['val_std']:.2f}"
            test = f"{100 * s['test_mean']:.2f} ± {100 * s['test_std']:.2f}"
            lines.append(f"{layers:>7}  {r.get('probe', 'lrgi'):<5} {metric:<9} {val:>15} "
                         f"{test:>15} {r['num_splits']:>6}  {r['split_source']}")
    return "\n".join(lines)
