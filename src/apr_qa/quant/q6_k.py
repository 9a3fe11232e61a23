"""GGML Q6_K: 256 weights in 210 bytes, value = d * scale * (q - 32).

Layout: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8 scales (one per 16
weights), f16 d. Within each 128-weight half, ql byte l holds weights l (low nibble) and l + 64
(high nibble), byte l + 32 holds l + 32 and l + 96; qh byte l holds the top bits of l, l + 32,
l + 64, l + 96 at shifts 0, 2, 4, 6.

The quantizer ports ggml's `quantize_row_q6_K_ref` / `make_qx_quants` (rmse_type 1, weights
x**2, 18 trial scales) with the C float32 operation order, vectorized over 16-weight sub-blocks
laid out transposed as (16, m) so sums accumulate in the C loop's order.

quantize_blocks runs the same arithmetic compiled from kernels.c (native.py) when a C compiler is
available; this port is the fallback, and the reference the compiled kernel must match at load.
"""

from __future__ import annotations

import numpy as np

from . import native

_QH_SHIFTS = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
NMAX = 32
GROUP_MAX_EPS = np.float32(1e-15)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int (round half to even via the 1.5 * 2**23 trick), bit for bit."""
    t = v + np.float32(12582912.0)
    return (t.view(np.int32) & 0x007FFFFF) - 0x00400000


def _first_absmax(cols: np.ndarray) -> np.ndarray:
    """Per column of cols (k, m), the first value of largest magnitude (`if (ax > amax)` scan)."""
    hi = cols.max(axis=0)
    lo = cols.min(axis=0)
    picked = np.where(-lo > hi, lo, hi)
    tie = np.flatnonzero(-lo == hi)  # +a and -a both present: the first one wins
    if tie.size:
        sub = cols[:, tie]
        picked[tie] = sub[np.abs(sub).argmax(axis=0), np.arange(tie.size)]
    return picked


def _levels(x: np.ndarray, iscale: np.ndarray) -> np.ndarray:
    # |iscale * x| <= 33 here (max is the largest magnitude), where rint equals nearest_int.
    return np.clip(np.rint(iscale * x), np.float32(-NMAX), np.float32(NMAX - 1))


def _make_qx_quants(x: np.ndarray):
    """make_qx_quants(16, 32, x, L, rmse_type=1, NULL) over columns of x (16, m).

    Returns (L as int levels 0..63, scale per column)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mx = _first_absmax(x)
        zero = np.abs(mx) < GROUP_MAX_EPS
        w = x * x
        wx = w * x

        def sums(lv):
            return np.add.reduce(wx * lv, axis=0), np.add.reduce(w * lv * lv, axis=0)

        iscale = np.float32(-NMAX) / mx
        best_l = _levels(x, iscale)
        sumlx, suml2 = sums(best_l)
        scale = np.where(suml2 != 0, sumlx / suml2, np.float32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(np.float32(NMAX) + np.float32(0.1) * np.float32(step)) / mx
            lv = _levels(x, iscale)
            sumlx, suml2 = sums(lv)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            np.copyto(best_l, lv, where=better)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    best_l[:, zero] = -NMAX  # all-zero sub-blocks store level 0
    return (best_l + np.float32(NMAX)).astype(np.uint8), np.where(zero, np.float32(0), scale)


def quantize_blocks(blocks: np.ndarray, out: np.ndarray) -> None:
    """Quantize (n, block_elems) float32 into (n, block_bytes): the compiled kernel, else the numpy port."""
    if not native.run("q6_k", blocks, out):
        quantize_blocks_numpy(blocks, out)


def quantize_blocks_numpy(blocks: np.ndarray, out: np.ndarray) -> None:
    n = blocks.shape[0]
    x = blocks.reshape(n * 16, 16).T.copy()  # (16, sub-blocks), C order
    levels, scales = _make_qx_quants(x)

    # ggml's `abs_scale > max_abs_scale` scan never picks a NaN scale (from |x| > 1.8e19, where x*x
    # overflows); an all-NaN block stays below the threshold and is zeroed.
    top = _first_absmax(np.where(np.isnan(scales), np.float32(0), scales).reshape(n, 16).T.copy())
    empty = np.abs(top) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.float32(-128) / top
        d16 = (np.float32(1) / iscale).astype(np.float16)
        sc = np.minimum(_nearest_int(iscale[:, None] * scales.reshape(n, 16)), 127).astype(np.int8)
        # Re-quantize with the stored scales; sub-blocks with d == 0 keep make_qx_quants' levels.
        d = (d16.astype(np.float32)[:, None] * sc).reshape(-1)
        final = np.clip(_nearest_int(x / d), -NMAX, NMAX - 1) + NMAX
    levels = np.where(d != 0, final, levels).astype(np.uint8)

    q = levels.T.reshape(n, 2, 4, 32)  # [half, k, l]: weight 128 * half + 32 * k + l
    ql = (q[:, :, 0:2, :] & 0x0F) | ((q[:, :, 2:4, :] & 0x0F) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    out[:, :128] = ql.reshape(n, 128)
    out[:, 128:192] = qh.reshape(n, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(n, 2)
    out[empty] = 0  # ggml memsets a block whose scales are all ~0


def dequantize_blocks(raw: np.ndarray, out: np.ndarray) -> None:
    n = raw.shape[0]
    ql = raw[:, :128].reshape(n, 2, 1, 64)
    qh = raw[:, 128:192].reshape(n, 2, 1, 32)
    scales = raw[:, 192:208].view(np.int8).astype(np.float32)
    d = raw[:, 208:210].copy().view(np.float16).astype(np.float32)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)
    high = ((qh >> _QH_SHIFTS) & 0x03) << 4
    q = (low | high).view(np.int8) - np.int8(32)
    with np.errstate(invalid="ignore"):  # inf scales give NaN, as in ggml
        np.multiply((d * scales).reshape(n, 16, 1), q.reshape(n, 16, 16), out=out.reshape(n, 16, 16))
