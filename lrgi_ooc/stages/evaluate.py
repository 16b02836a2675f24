"""Linear-probe evaluation (docs/cli.md "evaluate"; protocol in LRGI.md).

The probe must give the same number whether the table fits in memory or not, so there is ONE
training loop fed by either a resident batch or a stream of mini-batches: each epoch sums the
gradient of the full-batch loss over the batches and takes ONE Adam step, the training mean/std
come from a fixed-block float64 pass (identical bits in both modes), and scores are integer
counts summed over batches.
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


@torch.no_grad()
def _evaluate(model: torch.nn.Module, feed: _Feed, multilabel: bool) -> float:
    total = np.zeros(2 if not multilabel else 3, dtype=np.int64)
    for x, y in feed:
        total += _counts(model(x), y, multilabel)
    return _score(total, multilabel)


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
    """torch.optim.Adam's CPU arithmetic (single-tensor path, no weight decay), written out:
    the first torch.optim optimiser imports torch._dynamo, about 6 s on these machines, which
    would dominate a small `evaluate`. tests/test_probe.py checks it against torch.optim.Adam."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
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
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
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
         multilabel: bool, epochs: int, lr: float, device: torch.device,
         progress: Any = None, trace: bool = False) -> dict[str, Any]:
    """Full-batch training; test scored once, with the weights of the best-val epoch."""
    with _threads_for(min(train.n, train.batch_rows) * num_features):
        return _fit_loop(train, val, test, num_features=num_features, num_classes=num_classes,
                         multilabel=multilabel, epochs=epochs, lr=lr, device=device,
                         progress=progress, trace=trace)


def _fit_loop(train: _Feed, val: _Feed, test: _Feed, *, num_features: int, num_classes: int,
              multilabel: bool, epochs: int, lr: float, device: torch.device,
              progress: Any, trace: bool) -> dict[str, Any]:
    model = _init_linear(num_features, num_classes, device)
    opt = _Adam(list(model.parameters()), lr=lr)
    denom = train.n * (num_classes if multilabel else 1)
    best, best_epoch, best_state = -1.0, 0, None
    vals, tests = [], []
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        for x, y in train:
            out = model(x)
            loss = (F.binary_cross_entropy_with_logits(out, y, reduction="sum") if multilabel
                    else F.cross_entropy(out, y, reduction="sum")) / denom
            loss.backward()
        opt.step()
        v = _evaluate(model, val, multilabel)
        if v > best:                                     # strict: ties keep the earliest
            best, best_epoch = v, epoch
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        if trace:
            vals.append(v)
            tests.append(_evaluate(model, test, multilabel))
        if progress is not None:
            progress.update(1)
    model.load_state_dict(best_state)
    out = {"val": best, "test": _evaluate(model, test, multilabel), "epoch": best_epoch,
           "weight": model.weight.detach().cpu().numpy(), "bias": model.bias.detach().cpu().numpy()}
    if trace:
        out["val_trace"], out["test_trace"] = vals, tests
    return out


def linear_probe(x_train: Any, y_train: Any, x_val: Any, y_val: Any, x_test: Any, y_test: Any,
                 *, multilabel: bool, epochs: int = 1000, lr: float = 1e-2,
                 device: str | torch.device = "cpu", trace: bool = False) -> dict[str, Any]:
    """In-memory probe on arrays: {"val", "test", "epoch", "weight", "bias"}.

    `epoch` counts optimiser steps (1..epochs); `trace=True` adds per-epoch val/test scores.
    """
    arr = [np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
           for a in (x_train, y_train, x_val, y_val, x_test, y_test)]
    parts = [_Rows(arr[i], None, arr[i + 1]) for i in (0, 2, 4)]
    num_classes = arr[1].shape[1] if multilabel else int(max(a.max(initial=-1)
                                                             for a in arr[1::2])) + 1
    dev = torch.device(device)
    mean, std = _moments(parts[0])
    feeds = [_Feed(p, mean, std, multilabel=multilabel, device=dev, batch_rows=p.n,
                   resident=True) for p in parts]
    return _fit(*feeds, num_features=mean.size, num_classes=num_classes, multilabel=multilabel,
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


def evaluate_store(store: GraphStore, layer: int, *, num_splits: int = 5, seed: int = 0,
                   epochs: int = 1000, stream: bool | None = None, memory_limit: int = 2 << 30,
                   batch_rows: int = 65536, device: str | torch.device | None = None,
                   lr: float = 1e-2, weights: bool = False) -> dict[str, Any]:
    """Probe one table of the store over its split(s), or random 10/10/80 splits.

    Returns the JSON document of docs/cli.md; `weights=True` adds each split's chosen
    weight/bias (numpy) to `per_split`, for comparisons, which makes it non-JSON.
    """
    layer = int(layer)
    if layer < 0:
        raise InputError(f"--layer: must be >= 0, got {layer}")
    if num_splits < 1 or epochs < 1 or batch_rows < 1:
        raise InputError("--num-splits, --epochs and --batch-rows must be >= 1")
    labels = store.labels()
    if labels is None:
        raise InputError(f"{store.path}: store has no labels: nothing to probe")
    key = store.table_key(layer)
    if not store.has(key):
        raise InputError(f"{store.path}: store has no node features" if layer == 0 else
                         f"{store.path}: layer {layer} table is missing: run "
                         f"`lrgi-ooc embed {store.path} --layer {layer}` first")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device: cuda requested but torch sees no GPU")
    dev = torch.device(device)
    multilabel = labels.ndim > 1
    num_classes = labels.shape[1] if multilabel else max(
        int(store.meta.get("num_classes") or 0), int(labels.max(initial=-1)) + 1)
    splits, source = _resolve_splits(store, labels, num_splits, seed)
    # Sparse id sets (papers100M: 1% of rows) gather better without the kernel's read-around.
    sparse = max(sum(len(sp[p]) for p in PARTS) for sp in splits) < store.info(key).num_rows // 4
    table = store.mmap(key, random_access=sparse)
    inductive = layer > 0 and store.has(train_embeddings_key(layer))
    train_table = store.mmap(train_embeddings_key(layer), random_access=False) if inductive else None
    if inductive:
        if source != "store":
            raise InputError(f"{store.path}: layer {layer} has inductive training embeddings, "
                             "which need the store's single split")
        if train_table.shape[0] != len(splits[0]["train"]):
            raise InputError(f"{store.path}: layer {layer} training embeddings have "
                             f"{train_table.shape[0]} rows, split train has "
                             f"{len(splits[0]['train'])}")
    num_features = int(np.prod(table.shape[1:]))
    # resident float32 rows of train and val plus, while one part is loaded, its gathered
    # copy; test is scored once, after training, so it always streams (same counts)
    need = max(len(sp["train"]) + len(sp["val"]) for sp in splits) * num_features * 4 * 2
    if stream is None:
        stream = need > memory_limit
    per_split = []
    with bar(len(splits) * epochs, f"probe layer {layer}", unit="epoch") as pb:
        for sp in splits:
            rows = [_Rows(train_table, None, labels[sp["train"]]) if inductive and p == "train"
                    else _Rows(table, sp[p], labels[sp[p]]) for p in PARTS]
            mean, std = _moments(rows[0])
            feeds = [_Feed(r, mean, std, multilabel=multilabel, device=dev,
                           batch_rows=batch_rows, resident=not stream and p != "test")
                     for r, p in zip(rows, PARTS)]
            r = _fit(*feeds, num_features=num_features, num_classes=num_classes,
                     multilabel=multilabel, epochs=epochs, lr=lr, device=dev, progress=pb)
            keep = ("val", "test", "epoch") + (("weight", "bias") if weights else ())
            per_split.append({f: r[f] for f in keep})
            del feeds, rows
    val_mean, val_std = _mean_std([r["val"] for r in per_split])
    test_mean, test_std = _mean_std([r["test"] for r in per_split])
    return {"layer": layer, "metric": "micro_f1" if multilabel else "accuracy",
            "test_mean": test_mean, "test_std": test_std, "val_mean": val_mean,
            "val_std": val_std, "num_splits": len(splits), "split_source": source,
            "per_split": per_split, "epochs": epochs, "seed": seed, "streamed": bool(stream),
            "inductive": bool(inductive), "std": "sample (ddof=1) over splits; 0 for one split"}


def run_probe_table(store: GraphStore, layers: list[int], **kw: Any) -> list[dict[str, Any]]:
    """One `evaluate_store` result per layer, e.g. [0, 1, 2] to compare with raw features."""
    return [evaluate_store(store, layer, **kw) for layer in layers]


def format_table(results: list[dict[str, Any]]) -> str:
    """A small fixed-width table, scores in percent."""
    head = f"{'layer':>5}  {'metric':<9} {'val (%)':>15} {'test (%)':>15} {'splits':>6}  source"
    lines = [head, "-" * len(head)]
    for r in results:
        val = f"{100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f}"
        test = f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}"
        lines.append(f"{r['layer']:>5}  {r['metric']:<9} {val:>15} {test:>15} "
                     f"{r['num_splits']:>6}  {r['split_source']}")
    return "\n".join(lines)
