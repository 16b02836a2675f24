"""A trained LRGI block's parameters as numpy arrays, saved beside its torch checkpoint.

`embed` needs only these arrays, two matmuls and the numba kernel: reading them from
`block.npz` keeps torch (seconds of import per process and Dask worker, hundreds of MB) out
of the embed stage and its workers. The matmuls run on a CUDA device only when one is asked
for (then torch is imported)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.nn.sparseproj import sparse_matmul_t

BLOCK_FILE = "block.npz"
_ARRAYS = ("lin", "att_src", "att_dst", "bias", "skip")


def mix_residual(out: np.ndarray, x: np.ndarray, weights: tuple[float, float]) -> None:
    """out <- b * out + a * x in place (float32), the order `LRGIBlock` computes it in; the
    plain sum (1, 1) is one addition, as before the weights existed."""
    a, b = weights
    if b != 1.0:
        out *= np.float32(b)
    x = np.asarray(x, dtype=np.float32)
    out += x if a == 1.0 else x * np.float32(a)


def residual_weights(layer: int, scale: float, damping: float = 1.0) -> tuple[float, float]:
    """(a, b) of a residual layer's table a H + b f(H): layer 2 is s (H + f(H)); from layer
    3 on the layer's output enters at `damping` times its input's weight, rescaled so that
    the table keeps the spread of the mix at damping 1 (s (H + f(H)), two nearly
    uncorrelated parts of one spread): s sqrt(2) (H + d f(H)) / sqrt(1 + d^2)."""
    s, d = float(scale), float(damping)
    if layer < 3 or d == 1.0:
        return (s, s)
    c = s * (2.0 / (1.0 + d * d)) ** 0.5
    return (c, c * d)


@dataclass(frozen=True)
class GATWeights:
    lin: np.ndarray          # [H * C, F]
    att_src: np.ndarray      # [H, C]
    att_dst: np.ndarray      # [H, C]
    bias: np.ndarray         # [H * C]
    skip: np.ndarray         # [H * C, F]
    heads: int
    negative_slope: float = 0.2
    residual: bool = False   # the output adds the input row (LRGIBlock's `residual`)
    # with `residual`, the output is a * input + b * block output: (a, b)
    residual_weights: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_state(cls, state: dict[str, Any], heads: int,
                   negative_slope: float = 0.2) -> "GATWeights":
        """From an `LRGIBlock` state dict (keys of PyG's GATConv: conv.lin.weight, ...)."""
        def arr(key: str) -> np.ndarray:
            return np.ascontiguousarray(state[key].detach().cpu().float().numpy())
        att_src = arr("conv.att_src").reshape(heads, -1)
        bias = arr("conv.bias") if state.get("conv.bias") is not None \
            else np.zeros(att_src.size, np.float32)
        return cls(arr("conv.lin.weight"), att_src, arr("conv.att_dst").reshape(heads, -1),
                   bias, arr("skip.weight"), int(heads), float(negative_slope))

    @classmethod
    def from_block(cls, block: Any) -> "GATWeights":
        return replace(cls.from_state(block.state_dict(), block.conv.heads),
                       negative_slope=float(block.conv.negative_slope),
                       residual=bool(getattr(block, "residual", False)),
                       residual_weights=tuple(getattr(block, "residual_weights", (1.0, 1.0))))

    def save(self, path: Path, **meta: int | bool) -> None:
        """Atomically, with small integer metadata (in_dim, dim, inductive, ...)."""
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: getattr(self, k) for k in _ARRAYS}, heads=self.heads,
                     negative_slope=self.negative_slope,
                     **{k: np.int64(v) for k, v in meta.items()})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> tuple["GATWeights", dict[str, int]]:
        with np.load(path) as z:
            w = cls(*(np.ascontiguousarray(z[k], dtype=np.float32) for k in _ARRAYS),
                    int(z["heads"]), float(z["negative_slope"]))
            meta = {k: int(z[k]) for k in z.files if k not in _ARRAYS
                    and k not in ("heads", "negative_slope")}
        return w, meta


def matmul_t(x: np.ndarray, weight: np.ndarray, device: str = "cpu") -> np.ndarray:
    """x @ weight.T as float32: on the CPU by BLAS in float64, then rounded (a float32 BLAS
    result depends on its thread count, 4e-6 apart between 1 and 2 threads here, so a Dask
    worker and this process would disagree); by torch on a CUDA device. Sparse float32 rows
    (bag-of-words features) go through their non-zeros only (`sparseproj`), same sums."""
    if not str(device).startswith("cuda"):
        out = sparse_matmul_t(x, weight)
        if out is not None:
            return out
        out = np.asarray(x, dtype=np.float64) @ weight.T.astype(np.float64)
        return out.astype(np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    import torch
    with torch.no_grad():
        xt = torch.from_numpy(x).to(device, non_blocking=True)
        return (xt @ torch.from_numpy(weight).to(device).t()).cpu().numpy()
