"""The real `preprocess` CLI on 20 M edges stays within --memory-limit 256MB + fixed overhead.

The fixed overhead is what the process holds whatever the graph: the interpreter, numpy, zarr,
pyarrow, numba and its loaded kernels (about 175 MB measured here, see docs/benchmarks.md),
plus the ingest's input chunks. The child's peak RSS is read through a wrapper process so that
no other child of the pytest process can be mistaken for it.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from lrgi_ooc.store.layout import INDICES, INDPTR, GraphStore

LIMIT_MB = 256
FIXED_OVERHEAD_MB = 200
NUM_EDGES = 20_000_000
NUM_NODES = 2_000_000

WRAPPER = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(p.returncode)")


def run_measured(args: list[str]) -> tuple[int, str]:
    """Peak RSS in MB of `python -m lrgi_ooc <args>` and its stderr."""
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "lrgi_ooc", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.strip().splitlines()[-1]) // 1024, p.stderr


def write_edges(path: Path, seed: int = 0, block: int = 1 << 22) -> None:
    """[2, E] int64 .npy with self loops and duplicates, written block by block."""
    rng = np.random.default_rng(seed)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(2, NUM_EDGES))
    for s in range(0, NUM_EDGES, block):
        k = min(block, NUM_EDGES - s)
        blk = rng.integers(0, NUM_NODES, (2, k))
        blk[1, :k // 1000] = blk[0, :k // 1000]                  # self loops
        blk[:, k - k // 100:] = blk[:, :k // 100]                 # duplicates
        arr[:, s:s + k] = blk
    arr.flush()
    del arr


def reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.sparse as sp
    e = np.load(path)
    keep = e[0] != e[1]
    src, dst = e[0][keep], e[1][keep]
    del e
    a = sp.csr_matrix((np.ones(len(src), np.int8), (dst, src)), shape=(NUM_NODES, NUM_NODES))
    a.sum_duplicates()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices


def test_preprocess_20m_edges_within_256mb(tmp_path):
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.array([[0, 1, 2], [1, 2, 0]]))
    # warms numba's cache (a cold compile costs time and memory once) and lists the imports
    _, err = run_measured(["preprocess", "--edges", str(tiny), "--out", str(tmp_path / "t")])
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "lrgi_ooc", "preprocess",
                        "--edges", str(tiny), "--out", str(tmp_path / "t2")],
                       capture_output=True, text=True, env=cli_env())
    assert p.returncode == 0, p.stderr[-2000:]
    imported = {ln.split("|")[-1].strip() for ln in p.stderr.splitlines() if "|" in ln}
    assert "torch" not in imported

    edges = tmp_path / "edges.npy"
    write_edges(edges)
    out = tmp_path / "store"
    peak_mb, err = run_measured(["preprocess", "--edges", str(edges), "--out", str(out),
                                 "--memory-limit", f"{LIMIT_MB}MB"])
    assert peak_mb < LIMIT_MB + FIXED_OVERHEAD_MB, f"peak RSS {peak_mb} MB"

    store = GraphStore(out)
    indptr = store.zarr_array(INDPTR)[...]          # read back with zarr-python
    indices = store.zarr_array(INDICES)[...]
    ref_ptr, ref_idx = reference(edges)
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)
    assert store.num_edges == len(ref_idx)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
