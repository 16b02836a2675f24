"""GAT neighbourhood aggregation over CSR rows: compiled, two passes per piece of edges.

Why a kernel: once every node's projection h_j = W x_j and source logits a_src(j) are
computed (once per node, not once per edge), what remains per edge is one LeakyReLU, one
exp per head and a D-wide multiply-add on a row fetched from anywhere in the table: a
memory-latency problem. In torch that costs several [E, H] / [E, H, C] temporaries and a
sort per piece; here each source row is read once, with a software prefetch a few edges
ahead (1.5-2x on random rows, docs/benchmarks.md), and each target keeps O(H * C) state.

State per target (running max m, running sum s, weighted accumulator acc) starts from the
self loop (GATConv replaces existing self loops with exactly one per node) and is updated
piece by piece, so a node of any degree fits in bounded memory: pass 1 computes a piece's
logits and their max, the state is rescaled once by exp(m_old - m_new) when the max grew,
pass 2 adds exp(logit - m) * h_j. `finish` divides by the sum.

float16 projections (`--table-dtype float16`): the kernels take the uint16 bits
(`kernel_array`) and widen each value to float32 as it is loaded (the CPU's half-to-float
conversion, F16C on x86; an exact integer fallback where LLVM cannot emit it); every sum,
max and exp stays float32, so the result is bit for bit the float32 kernel's on the rounded
values. Measured (one thread, 100k targets x 10 random sources, 4 heads x 16): 117 ms on a
200k-node float16 projection against 188 ms float32, 204 against 243 ms at 2M nodes (half
the bytes per row); converting the block to float32 first took 208 / 522 ms, and a 2^16-entry
lookup table or the integer conversion in the loop cost 1.6-2x F16C's time. On float32
arrays `_value` is the identity: the float32 kernels are unchanged.
"""
from __future__ import annotations

import numba
import numpy as np

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_JIT = dict(nogil=True, cache=True)
# no nnan / ninf: the logits are finite, but -inf-free code should not depend on that flag
_FAST = {"nsz", "arcp", "contract", "reassoc"}
PREFETCH_ROWS = 4      # distance (edges) of the row prefetch; 3-4 best on this machine
PREFETCH_LOGITS = 8


@intrinsic
def _prefetch_row(typingctx, arr, i):
    """Hint the CPU to load row i of a C-contiguous 2-D array (llvm.prefetch, read, L1)."""
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx, zero])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _half_bits_to_f32(typingctx, bits):
    """float16 bits (uint16) -> float32 by LLVM's fpext (vcvtph2ps with F16C)."""
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 16:
            v = builder.trunc(v, ir.IntType(16))
        return builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType())
    return sig, codegen


@intrinsic
def _bits_to_f32(typingctx, bits):
    """The float32 whose bits are the low 32 of an integer."""
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return sig, codegen


@numba.njit(inline="always")
def _half_exact(x):
    """float16 bits -> float32 in integers (no float32 subnormal is ever formed, so a
    flush-to-zero mode cannot change it): the fallback of `_half_bits_to_f32`."""
    b = np.int64(x)
    e = (b >> 10) & 0x1f
    m = b & 0x3ff
    sign = (b & 0x8000) << 16
    if e == 0:                                   # zero or subnormal: m * 2^-24
        v = np.float32(m) * np.float32(5.9604644775390625e-08)
        return -v if sign else v
    if e == 31:                                  # inf / nan
        return _bits_to_f32(sign | 0x7f800000 | (m << 13))
    return _bits_to_f32(sign | ((e + 112) << 23) | (m << 13))


@numba.njit(cache=True)
def _widen_hw(bits: np.ndarray, out: np.ndarray) -> None:
    for i in range(bits.shape[0]):
        out[i] = _half_bits_to_f32(bits[i])


def _hardware_half() -> bool:
    """Whether this machine's compiled fpext is there and exact on every float16 value."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got = np.empty_like(want)
    try:
        _widen_hw(bits, got)
    except Exception:                            # no half support in this LLVM target
        return False
    nan = np.isnan(want)
    return bool(np.array_equal(got[~nan], want[~nan]) and np.isnan(got[nan]).all())


HARDWARE_HALF = _hardware_half()


def _value(x):
    """A table value as float32: float16 bits widened, float32 as it is."""
    raise NotImplementedError           # compiled only (overload below)


@overload(_value)
def _value_impl(x):
    if x == types.uint16:
        if HARDWARE_HALF:
            return lambda x: _half_bits_to_f32(x)
        return lambda x: _half_exact(x)
    return lambda x: x


def kernel_array(a: np.ndarray) -> np.ndarray:
    """What the kernels take for a projection array: float32 as it is, float16 as its uint16
    bits (numba has no float16 on the CPU; `_value` widens each value as it is loaded)."""
    a = a.view(np.ndarray) if isinstance(a, np.memmap) else a
    if a.dtype == np.float16:
        return a.view(np.uint16)
    if a.dtype != np.float32:
        raise TypeError(f"projection arrays are float32 or float16, got {a.dtype}")
    return a


def empty_state(rows: int, heads: int, width: int) -> tuple[np.ndarray, ...]:
    """Running-softmax state of `rows` targets: (max m, denominator s, a_dst, acc [rows, H*C]),
    filled by init_state; one definition for the in-memory and the streamed aggregation."""
    return (np.empty((rows, heads), np.float32), np.empty((rows, heads), np.float32),
            np.empty((rows, heads), np.float32), np.empty((rows, heads * width), np.float32))


@numba.njit(parallel=True, **_JIT)
def init_state(h: np.ndarray, a_src: np.ndarray, att_dst: np.ndarray, targets: np.ndarray,
               slope: float, a_dst: np.ndarray, m: np.ndarray, s: np.ndarray,
               acc: np.ndarray) -> None:
    """Each target's destination logits (att_dst: [H, C]) and its state after its self loop."""
    heads, width = att_dst.shape
    for r in numba.prange(targets.shape[0]):
        t = targets[r]
        for k in range(heads):
            d = np.float32(0.0)
            for c in range(width):
                d += _value(h[t, k * width + c]) * att_dst[k, c]
            a_dst[r, k] = d
            e = _value(a_src[t, k]) + d
            if e < 0:
                e *= slope
            m[r, k] = e
            s[r, k] = 1.0
        for c in range(h.shape[1]):
            acc[r, c] = _value(h[t, c])


@numba.njit(parallel=True, fastmath=_FAST, **_JIT)
def accumulate(h: np.ndarray, a_src: np.ndarray, targets: np.ndarray, sources: np.ndarray,
               starts: np.ndarray, ends: np.ndarray, a_dst: np.ndarray, slope: float,
               m: np.ndarray, s: np.ndarray, acc: np.ndarray, logits: np.ndarray) -> None:
    """Fold the edges sources[starts[r]:ends[r]] -> targets[r] into the state of each r.

    h: [N, H * C] projected rows; a_src: [N, H] (float32, or float16 bits: kernel_array);
    logits: scratch, [len(sources), H].
    Edges from a target to itself are skipped (its one self loop is in the initial state)."""
    heads = a_src.shape[1]
    width = h.shape[1] // heads
    n = sources.shape[0]
    for r in numba.prange(targets.shape[0]):
        t = targets[r]
        k0, k1 = starts[r], ends[r]
        if k0 >= k1:
            continue
        mx = np.empty(heads, np.float32)
        for k in range(heads):
            mx[k] = m[r, k]
        for i in range(k0, k1):                      # pass 1: logits and their max
            if i + PREFETCH_LOGITS < n:
                _prefetch_row(a_src, sources[i + PREFETCH_LOGITS])
            j = sources[i]
            if j == t:
                continue
            for k in range(heads):
                e = _value(a_src[j, k]) + a_dst[r, k]
                if e < 0:
                    e *= slope
                logits[i, k] = e
                if e > mx[k]:
                    mx[k] = e
        for k in range(heads):                       # rescale once if the max grew
            if mx[k] > m[r, k]:
                scale = np.exp(m[r, k] - mx[k])
                s[r, k] *= scale
                for c in range(k * width, (k + 1) * width):
                    acc[r, c] *= scale
                m[r, k] = mx[k]
        for i in range(k0, k1):                      # pass 2: weighted rows
            if i + PREFETCH_ROWS < n:
                _prefetch_row(h, sources[i + PREFETCH_ROWS])
            j = sources[i]
            if j == t:
                continue
            for k in range(heads):
                w = np.exp(logits[i, k] - m[r, k])
                s[r, k] += w
                for c in range(k * width, (k + 1) * width):
                    acc[r, c] += w * _value(h[j, c])


@numba.njit(parallel=True, fastmath=_FAST | {"afn"}, **_JIT)
def finish(s: np.ndarray, acc: np.ndarray, bias: np.ndarray, skip: np.ndarray,
           out: np.ndarray) -> None:
    """out = ELU(acc / s + bias + skip): the attention-weighted mean of each head, the GAT
    bias and the skip connection."""
    heads = s.shape[1]
    width = acc.shape[1] // heads
    for r in numba.prange(acc.shape[0]):
        for k in range(heads):
            inv = 1.0 / s[r, k]
            for c in range(k * width, (k + 1) * width):
                v = acc[r, c] * inv + bias[c] + skip[r, c]
                out[r, c] = v if v > 0 else np.exp(v) - np.float32(1.0)   # 1.6x expm1


@numba.njit(parallel=True, **_JIT)
def advance(sources: np.ndarray, cur: np.ndarray, ends: np.ndarray, bound: int,
            out: np.ndarray) -> None:
    """out[r]: the first position in sources[cur[r]:ends[r]] (ascending) whose source is at
    least `bound`. A streamed task calls it once per source block with cur = the previous
    block's out, so finding every block's sub-range of every row costs one pass over the
    edges in all, not one per block."""
    for r in numba.prange(cur.shape[0]):
        p = cur[r]
        e = ends[r]
        while p < e and sources[p] < bound:
            p += 1
        out[r] = p
