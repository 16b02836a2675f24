"""`synth`: a degree-corrected contextual SBM (DC-CSBM) of any size, streamed to files.

Why this shape: benchmarks and the quickstart need graphs larger than memory whose classes
only structure and features together recover. Nothing here holds a per-node array: every
edge and label is a pure function of (seed, index), features of (seed, fixed node block),
so memory is O(classes x feature_dim) plus block buffers, and the output does not depend on
--edges-per-part or thread counts.

Model (docs/cli.md, "synth"):
- Nodes live at *positions* p in [0, N); classes are contiguous, balanced position ranges
  (sizes differ by at most 1). A keyed Feistel permutation (cycle walking) maps positions to
  node ids, so labels and hubs are scattered at random over ids.
- The propensity of the node with rank r inside its class is
  theta_r = integral_r^{r+1} (x + r0)^(-1/(gamma-1)) dx: a Zipf profile giving degrees with a
  power-law tail of exponent gamma; r0 >= 0 clips the largest expected degree to max_degree.
  Its CDF inverts in closed form, so sampling needs no table.
- Each of E = round(N * avg_degree / 2) undirected edges: source proportional to theta over
  all nodes; with probability h the destination is proportional to theta inside the source's
  class, otherwise inside a class drawn uniformly among the C - 1 others. Self loops are
  dropped (counted); rare duplicates are kept (preprocess removes them).
- Features: x_i = signal * mu_{y_i} + N(0, I); the means are orthonormal when F >= C (else
  random unit vectors). By default `signal` is set so the Bayes accuracy of a linear
  classifier on raw features is RAW_ACCURACY; averaging neighbours (h > 1/C) raises it.
- Sparse labels (labelled_fraction < 1, as ogbn-papers100M's 1.4 %): a second keyed Feistel
  permutation ranks the node ids; the round(F * N) lowest ranks keep their label, split
  train / val / test by SPLIT_SHARES (ranks in that order), the others get label -1. Exact
  counts, still a pure function of (seed, index); graph and features do not change.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from lrgi_ooc.base.errors import InputError, require
from lrgi_ooc.base.progress import bar
from lrgi_ooc.store.publish import clean_stale

DEFAULTS = dict(nodes=100_000, avg_degree=20.0, classes=8, feature_dim=64, homophily=0.8,
                seed=0, degree_exponent=2.5)
RAW_ACCURACY = 0.60            # default Bayes accuracy of a linear classifier on raw features
EDGES_PER_PART = 1 << 23       # 8,388,608 edges per Parquet part (one row group each)
NODES_PER_BLOCK = 1 << 16      # feature / label rows per step (fixes the noise draws)
PARQUET_COMPRESSION = "zstd"   # level 1: the always-zero high bits of ids compress away
PARQUET_ENCODING = "PLAIN"     # no dictionary (random ids defeat it; 2x faster to write);
                               # BYTE_STREAM_SPLIT is 10% smaller but needs pyarrow >= 16
SPLIT_SHARES = (11, 1, 2)      # train / val / test of the labelled nodes: ogbn-papers100M's
                               # 1.1 % / 0.1 % / 0.2 % of all nodes
SPLIT_FILES = ("train.npy", "val.npy", "test.npy")
FEATURE_DTYPES = ("float32", "float16")
_STREAMS = 5                   # 64-bit keys: 4 counter-based edge streams, 1 for features
_ROUNDS = 4                    # Feistel rounds; each takes an xor key and an odd multiplier

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0


# ---------------------------------------------------------------- counter-based randomness
@njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    """SplitMix64 finaliser: a bijective, well-mixed hash of one 64-bit word."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _uniform(key: np.uint64, i: np.int64) -> float:
    """The i-th value in [0, 1) of the SplitMix64 stream started at `key`."""
    return float(_mix(key + np.uint64(i) * _GOLD) >> _S11) * _INV53


@njit(cache=True, inline="always")
def _round(half: np.uint64, width: np.uint64, fkeys: np.ndarray, k: int) -> np.uint64:
    """Feistel round function: multiply-shift hash to `width` bits (top bits mix best)."""
    return ((half ^ fkeys[k]) * (fkeys[_ROUNDS + k] | np.uint64(1))) >> (np.uint64(64) - width)


@njit(cache=True, inline="always")
def _feistel(x: np.int64, n: np.int64, lbits: np.int64, rbits: np.int64,
             fkeys: np.ndarray) -> np.int64:
    """Keyed permutation of [0, n): unbalanced Feistel on lbits+rbits bits, cycle walking."""
    y = np.uint64(x)
    while True:
        wl, wr = np.uint64(lbits), np.uint64(rbits)
        left, right = y >> wr, y & ((np.uint64(1) << wr) - np.uint64(1))
        for k in range(_ROUNDS):
            f = _round(right, wl, fkeys, k)
            left, right = right, left ^ f
            wl, wr = wr, wl
        y = (left << wr) | right
        if y < np.uint64(n):
            return np.int64(y)


@njit(cache=True, inline="always")
def _feistel_inv(y: np.int64, n: np.int64, lbits: np.int64, rbits: np.int64,
                 fkeys: np.ndarray) -> np.int64:
    """Inverse of `_feistel` (same key and widths)."""
    x = np.uint64(y)
    while True:
        wl, wr = np.uint64(lbits), np.uint64(rbits)   # even rounds: widths as at the start
        left, right = x >> wr, x & ((np.uint64(1) << wr) - np.uint64(1))
        for k in range(_ROUNDS - 1, -1, -1):
            # forward round k mapped widths (a, b) -> (b, a); here (left, right) has (b, a)
            f = _round(left, wr, fkeys, k)
            left, right = right ^ f, left
            wl, wr = wr, wl
        x = (left << wr) | right
        if x < np.uint64(n):
            return np.int64(x)


# ---------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _rank(u: float, size: np.int64, lo: float, span: float, inv_b: float, r0: float) -> np.int64:
    """Inverse CDF of the class-internal Zipf profile: a rank in [0, size)."""
    r = np.int64((lo + u * span) ** inv_b - r0)
    return min(max(r, np.int64(0)), size - 1)


@njit(cache=True, parallel=True, nogil=True)
def _edge_block(e0, src, dst, n, starts, cum_mass, span, lo, inv_b, r0, h, keys, fkeys,
                lbits, rbits):
    """Edges e0 .. e0+len(src)-1 into src/dst (self loops as -1); returns same-class count."""
    num_classes = starts.shape[0] - 1
    total = cum_mass[num_classes]
    same = 0
    for j in prange(src.shape[0]):
        e = e0 + j
        t = _uniform(keys[0], e) * total
        c = min(np.searchsorted(cum_mass, t, side="right") - 1, num_classes - 1)
        u = min((t - cum_mass[c]) / (cum_mass[c + 1] - cum_mass[c]), 1.0)
        ps = starts[c] + _rank(u, starts[c + 1] - starts[c], lo, span[c], inv_b, r0)
        cd = c
        if _uniform(keys[1], e) >= h:
            k = min(np.int64(_uniform(keys[2], e) * (num_classes - 1)), num_classes - 2)
            cd = k + (k >= c)
        pd = starts[cd] + _rank(_uniform(keys[3], e), starts[cd + 1] - starts[cd], lo,
                                span[cd], inv_b, r0)
        if ps == pd:
            src[j] = -1
            dst[j] = -1
        else:
            src[j] = _feistel(ps, n, lbits, rbits, fkeys)
            dst[j] = _feistel(pd, n, lbits, rbits, fkeys)
            if cd == c:
                same += 1
    return same


@njit(cache=True, parallel=True, nogil=True)
def _label_block(i0, labels, n, num_classes, fkeys, lbits, rbits):
    """Classes of nodes i0 .. i0+len(labels)-1: class of the position each id came from."""
    for j in prange(labels.shape[0]):
        p = _feistel_inv(i0 + j, n, lbits, rbits, fkeys)
        labels[j] = (num_classes * (p + 1) - 1) // n


@njit(cache=True, parallel=True, nogil=True)
def _unlabel_block(i0, labels, parts, n, bounds, skeys, lbits, rbits):
    """Nodes i0 .. i0+len(labels)-1 by rank under the split permutation: part 0/1/2
    (train/val/test) below bounds[0]/[1]/[2], else part -1 and label -1."""
    for j in prange(labels.shape[0]):
        r = _feistel(i0 + j, n, lbits, rbits, skeys)
        if r < bounds[0]:
            parts[j] = 0
        elif r < bounds[1]:
            parts[j] = 1
        elif r < bounds[2]:
            parts[j] = 2
        else:
            parts[j] = -1
            labels[j] = -1


# ---------------------------------------------------------------- model parameters
def bayes_accuracy(signal: float, classes: int) -> float:
    """Accuracy of the optimal classifier for orthonormal means x signal + N(0, I) noise."""
    z = np.linspace(-9.0, 9.0, 4001)
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in z + signal]))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return float(np.trapezoid(pdf * cdf ** (classes - 1), z))


def auto_signal(classes: int, target: float = RAW_ACCURACY) -> float:
    """The signal whose Bayes accuracy on raw features is `target` (bisection)."""
    lo, hi = 0.0, 20.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if bayes_accuracy(mid, classes) < target else (lo, mid)
    return round(0.5 * (lo + hi), 6)


def _top_share(r0: float, size: int, b: float) -> float:
    """Share of a class's propensity held by its rank-0 node."""
    return ((1 + r0) ** b - r0 ** b) / ((size + r0) ** b - r0 ** b)


def clip_offset(size: int, b: float, avg_degree: float, max_degree: float) -> float:
    """Smallest r0 >= 0 with expected degree of the top node <= max_degree (bisection)."""
    def top(r0: float) -> float:
        return avg_degree * size * _top_share(r0, size, b)
    if top(0.0) <= max_degree:
        return 0.0
    lo, hi = 0.0, 1.0
    while top(hi) > max_degree and hi < 1e18:
        lo, hi = hi, hi * 4.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if top(mid) > max_degree else (lo, mid)
    return hi


def _exponent(x: float) -> float | int:
    """An integral 1/b as int: numba then raises by multiplication, ~10x cheaper than pow."""
    return int(round(x)) if abs(x - round(x)) < 1e-9 else x


def _keys(seed: int) -> np.ndarray:
    """Independent 64-bit stream keys derived from the seed (SeedSequence)."""
    return np.random.SeedSequence([int(seed), 0x5EED]).generate_state(_STREAMS + 2 * _ROUNDS,
                                                                      dtype=np.uint64)


def _split_keys(seed: int) -> np.ndarray:
    """Feistel keys of the split permutation (a stream of its own: `_keys` is unchanged)."""
    return np.random.SeedSequence([int(seed), 0x1ABE1]).generate_state(2 * _ROUNDS,
                                                                       dtype=np.uint64)


def split_sizes(nodes: int, labelled_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts of round(F * N) labelled nodes, shared by SPLIT_SHARES."""
    lab = int(round(nodes * labelled_fraction))
    total = sum(SPLIT_SHARES)
    train = (lab * SPLIT_SHARES[0] + total // 2) // total
    val = (lab * SPLIT_SHARES[1] + total // 2) // total
    return train, val, lab - train - val


def class_means(seed: int, classes: int, dim: int) -> np.ndarray:
    """Orthonormal class means when dim >= classes, else random unit vectors."""
    g = np.random.default_rng(np.random.SeedSequence([int(seed), 0xFEA7]))
    a = g.standard_normal((dim, classes))
    if dim >= classes:
        q, r = np.linalg.qr(a)
        return np.ascontiguousarray((q * np.sign(np.diag(r))).T)
    return np.ascontiguousarray((a / np.linalg.norm(a, axis=0)).T)


def _validate(out: Path, overwrite: bool, nodes: int, avg_degree: float, classes: int,
              feature_dim: int, homophily: float, degree_exponent: float,
              max_degree: float | None, signal: float | None, edges_per_part: int,
              labelled_fraction: float, feature_dtype: str) -> None:
    require(nodes >= 2, f"--nodes: need at least 2, got {nodes}")
    require(nodes < 1 << 62, f"--nodes: at most 2^62, got {nodes}")
    require(2 <= classes <= nodes, f"--classes: need 2 <= classes <= nodes, got {classes}")
    require(math.isfinite(avg_degree) and avg_degree > 0,
            f"--avg-degree: must be positive, got {avg_degree}")
    require(round(nodes * avg_degree / 2) >= 1, "--avg-degree: fewer than one edge requested")
    require(feature_dim >= 1, f"--feature-dim: must be >= 1, got {feature_dim}")
    require(0.0 <= homophily <= 1.0, f"--homophily: must be in [0, 1], got {homophily}")
    require(math.isfinite(degree_exponent) and degree_exponent > 2.0,
            f"--degree-exponent: must be > 2, got {degree_exponent}")
    require(max_degree is None or max_degree > 0, f"--max-degree: must be positive, got {max_degree}")
    require(signal is None or (math.isfinite(signal) and signal >= 0),
            f"--signal: must be >= 0, got {signal}")
    require(edges_per_part >= 1, f"--edges-per-part: must be >= 1, got {edges_per_part}")
    require(math.isfinite(labelled_fraction) and 0.0 < labelled_fraction <= 1.0,
            f"--labelled-fraction: must be in (0, 1], got {labelled_fraction}")
    if labelled_fraction < 1.0:
        require(round(nodes * labelled_fraction) >= sum(SPLIT_SHARES),
                f"--labelled-fraction: {labelled_fraction} of {nodes} nodes is "
                f"{round(nodes * labelled_fraction)} labelled nodes, too few for a "
                f"train/val/test split (need {sum(SPLIT_SHARES)})")
    require(feature_dtype in FEATURE_DTYPES,
            f"--feature-dtype: must be float32 or float16, got {feature_dtype!r}")
    if out.exists() and not overwrite:
        raise InputError(f"--out: {out} exists (pass --overwrite to replace it)")
    if out.exists():
        require(out.is_dir() and (not any(out.iterdir()) or (out / "synth.json").is_file()),
                f"--out: {out} is not an earlier synth output; refusing to overwrite it")
    require(out.parent.is_dir(), f"--out: parent directory {out.parent} does not exist")


# ---------------------------------------------------------------- generation
def generate(out: Path, *, nodes: int = DEFAULTS["nodes"],
             avg_degree: float = DEFAULTS["avg_degree"], classes: int = DEFAULTS["classes"],
             feature_dim: int = DEFAULTS["feature_dim"],
             homophily: float = DEFAULTS["homophily"], seed: int = DEFAULTS["seed"],
             overwrite: bool = False, degree_exponent: float = DEFAULTS["degree_exponent"],
             max_degree: float | None = None, signal: float | None = None,
             edges_per_part: int = EDGES_PER_PART, labelled_fraction: float = 1.0,
             feature_dtype: str = "float32") -> dict[str, Any]:
    """Write OUT/edges/part-*.parquet, features.npy, labels.npy, synth.json (and with
    labelled_fraction < 1, train.npy / val.npy / test.npy); return synth.json (plus
    `_seconds`, timings kept out of the file so that it stays deterministic).

    Output goes to a temporary directory beside OUT, renamed into place at the end.
    """
    out = Path(out).absolute()
    nodes, classes, feature_dim, seed = int(nodes), int(classes), int(feature_dim), int(seed)
    avg_degree, homophily, gamma = float(avg_degree), float(homophily), float(degree_exponent)
    labelled_fraction = float(labelled_fraction)
    _validate(out, overwrite, nodes, avg_degree, classes, feature_dim, homophily, gamma,
              max_degree, signal, int(edges_per_part), labelled_fraction, str(feature_dtype))
    fdtype = np.dtype(feature_dtype)
    split = split_sizes(nodes, labelled_fraction) if labelled_fraction < 1.0 else None
    num_edges = int(round(nodes * avg_degree / 2))
    id_dtype = np.dtype(np.int32 if nodes < 1 << 31 else np.int64)
    need = num_edges * 2 * id_dtype.itemsize + nodes * (feature_dim * fdtype.itemsize + 8)
    free = shutil.disk_usage(out.parent).free
    require(need < free, f"--out: about {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free")

    b = (gamma - 2.0) / (gamma - 1.0)                         # 1 - Zipf exponent
    starts = (np.arange(classes + 1, dtype=np.int64) * nodes) // classes
    sizes = np.diff(starts)
    max_degree = math.sqrt(nodes * avg_degree) if max_degree is None else float(max_degree)
    r0 = clip_offset(int(sizes.min()), b, avg_degree, max_degree)
    span = (sizes + r0) ** b - r0 ** b
    signal = auto_signal(classes) if signal is None else float(signal)
    keys = _keys(seed)
    bits = max(2, int(nodes - 1).bit_length())
    lbits, rbits = bits // 2, bits - bits // 2
    model = (nodes, starts, np.concatenate([[0.0], np.cumsum(span)]), span, r0 ** b,
             _exponent(1.0 / b), r0, homophily, keys, keys[_STREAMS:], lbits, rbits)

    clean_stale(out)         # a killed run's .synth-PID / .old-PID directories (pid gone)
    tmp = out.parent / f".{out.name}.synth-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        t0 = time.perf_counter()
        (tmp / "edges").mkdir()
        written, loops, same, parts = _write_edges(tmp / "edges", num_edges,
                                                   int(edges_per_part), id_dtype, model)
        t_edges = time.perf_counter() - t0
        _write_nodes(tmp, nodes, classes, class_means(seed, classes, feature_dim), signal,
                     keys[4], keys[_STREAMS:], lbits, rbits, fdtype,
                     None if split is None else (split, _split_keys(seed)))
        edge_bytes = sum(f.stat().st_size for f in (tmp / "edges").iterdir())
        info = {
            "model": "degree-corrected contextual SBM (lrgi_ooc.ingest.synth)",
            "parameters": dict(
                nodes=nodes, avg_degree=avg_degree, classes=classes, feature_dim=feature_dim,
                homophily=homophily, seed=seed, degree_exponent=gamma, max_degree=max_degree,
                signal=signal, noise_std=1.0, edges_per_part=int(edges_per_part),
                other_class="uniform over the other classes",
                labelled_fraction=labelled_fraction, feature_dtype=fdtype.name),
            "derived": dict(
                rank_offset_r0=r0,
                raw_bayes_accuracy=(round(bayes_accuracy(signal, classes), 4)
                                    if feature_dim >= classes else None),
                expected_top_degree=avg_degree * sizes.min() * _top_share(r0, sizes.min(), b),
                class_sizes={str(v): int(k) for v, k in zip(*np.unique(sizes,
                                                                        return_counts=True))}),
            "counts": dict(
                undirected_edges_requested=num_edges, edges_written=written,
                self_loops_dropped=loops, realised_homophily=same / max(written, 1),
                parts=parts, labelled_nodes=nodes if split is None else sum(split),
                split_sizes=None if split is None else dict(zip(("train", "val", "test"),
                                                                split))),
            "files": dict(
                edges="edges/", edge_columns=["src", "dst"], id_dtype=id_dtype.name,
                parquet_compression=PARQUET_COMPRESSION, parquet_encoding=PARQUET_ENCODING,
                features="features.npy", features_dtype=fdtype.name,
                labels="labels.npy", labels_dtype="int64", undirected=True,
                splits=None if split is None else dict(zip(("train", "val", "test"),
                                                           SPLIT_FILES))),
            "bytes": dict(
                edges=edge_bytes, features=(tmp / "features.npy").stat().st_size,
                labels=(tmp / "labels.npy").stat().st_size,
                per_edge=round(edge_bytes / max(written, 1), 3)),
        }
        (tmp / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["_seconds"] = {"edges": t_edges, "total": time.perf_counter() - t0}
    return info


def _write_edges(edir: Path, num_edges: int, per_part: int, id_dtype: np.dtype,
                 model: tuple) -> tuple[int, int, int, int]:
    """Stream edge blocks into Parquet parts; writing block k overlaps generating block k+1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = max(1, -(-num_edges // per_part))
    width = max(5, len(str(parts - 1)))
    bufs = [(np.empty(min(per_part, num_edges), id_dtype),
             np.empty(min(per_part, num_edges), id_dtype)) for _ in range(2)]
    written = loops = same = 0

    def write(k: int, src: np.ndarray, dst: np.ndarray) -> None:
        table = pa.table({"src": src, "dst": dst})
        pq.write_table(table, edir / f"part-{k:0{width}d}.parquet", row_group_size=len(src),
                       compression=PARQUET_COMPRESSION, compression_level=1,
                       use_dictionary=False, column_encoding=PARQUET_ENCODING)

    with ThreadPoolExecutor(1) as pool, bar(num_edges, "synth edges", unit="edge") as pb:
        pending = None
        for k in range(parts):
            e0 = k * per_part
            cnt = min(per_part, num_edges - e0)
            src, dst = (a[:cnt] for a in bufs[k % 2])
            # buffer k % 2 last held block k - 2, whose write finished before k - 1 was queued
            same += int(_edge_block(e0, src, dst, *model))
            keep = src >= 0
            nkeep = int(np.count_nonzero(keep))
            if nkeep < cnt:
                src, dst = src[keep], dst[keep]
            if pending is not None:
                pending.result()
            pending = pool.submit(write, k, src, dst)
            written += nkeep
            loops += cnt - nkeep
            pb.update(cnt)
        if pending is not None:
            pending.result()
    return written, loops, same, parts


def _write_nodes(tmp: Path, nodes: int, classes: int, means: np.ndarray, signal: float,
                 key: np.uint64, fkeys: np.ndarray, lbits: int, rbits: int,
                 fdtype: np.dtype = np.dtype(np.float32),
                 split: tuple[tuple[int, int, int], np.ndarray] | None = None) -> None:
    """labels.npy (int64) and features.npy (`fdtype`): .npy header, then raw appends of
    reused block buffers (a memmap would keep every written page in RSS). With `split`
    ((train, val, test) sizes, permutation keys): the split's index files the same way (their
    sizes are exact, so headers come first), labels outside it -1.

    Noise is numpy's ziggurat, one generator per block of `step` nodes keyed by the block
    index; `step` depends only on feature_dim, so the output is fixed by the parameters.
    Features are drawn in float32 and rounded per block to `fdtype`.
    """
    dim = means.shape[1]
    step = max(1, min(NODES_PER_BLOCK, (16 << 20) // (4 * dim)))
    scaled = (signal * means).astype(np.float32)
    slots = [(np.empty(step, np.int64), np.empty((step, dim), np.float32),
              np.empty((step, dim), np.float32)) for _ in range(2)]

    def fill(k: int, cnt: int, lab: np.ndarray, x: np.ndarray, shift: np.ndarray) -> None:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(key), k])))
        rng.standard_normal(dtype=np.float32, out=x[:cnt])      # releases the GIL
        np.take(scaled, lab[:cnt], axis=0, out=shift[:cnt])
        np.add(x[:cnt], shift[:cnt], out=x[:cnt])

    blocks = [(k, i0, min(step, nodes - i0)) for k, i0 in enumerate(range(0, nodes, step))]
    parts = np.empty(step, np.int8)
    with contextlib.ExitStack() as files:
        ff, fl = (files.enter_context(open(tmp / name, "wb"))
                  for name in ("features.npy", "labels.npy"))
        fs = [files.enter_context(open(tmp / name, "wb"))
              for name in (SPLIT_FILES if split is not None else ())]
        pool = files.enter_context(ThreadPoolExecutor(2))
        pb = files.enter_context(bar(nodes, "synth nodes", unit="node"))
        heads = [(ff, fdtype, (nodes, dim)), (fl, np.int64, (nodes,))]
        if split is not None:
            heads += [(f, np.int64, (size,)) for f, size in zip(fs, split[0])]
            bounds = np.cumsum(split[0]).astype(np.int64)
        for f, dtype, shape in heads:
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                "fortran_order": False, "shape": shape})
        for pair in range(0, len(blocks), 2):      # two blocks at a time, written in order
            todo = list(zip(blocks[pair:pair + 2], slots))
            for (k, i0, cnt), (lab, x, shift) in todo:
                _label_block(i0, lab[:cnt], nodes, classes, fkeys, lbits, rbits)
            futures = [pool.submit(fill, k, cnt, *slot) for (k, _, cnt), slot in todo]
            for ((_, i0, cnt), (lab, x, _)), fut in zip(todo, futures):
                fut.result()
                if split is not None:       # after fill: features use the true class
                    _unlabel_block(i0, lab[:cnt], parts[:cnt], nodes, bounds, split[1],
                                   lbits, rbits)
                    for code, f in enumerate(fs):
                        f.write(memoryview(np.flatnonzero(parts[:cnt] == code) + i0))
                ff.write(memoryview(x[:cnt] if fdtype == np.float32
                                    else x[:cnt].astype(fdtype)))
                fl.write(memoryview(lab[:cnt]))
                pb.update(cnt)


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished directory into place (replacing an earlier output last)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
