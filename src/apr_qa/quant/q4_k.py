"""GGML Q4_K: 256 weights in 144 bytes, value = d * sc * q - dmin * m.

Layout: f16 d, f16 dmin, 12 bytes packing eight 6-bit scales and eight 6-bit mins, 128 bytes of
nibbles (sub-blocks 2i and 2i+1 share 32 bytes: low and high nibbles).

The quantizer is a port of ggml's `quantize_row_q4_K_ref` / `make_qkx2_quants` (weights
av_x + |x|, nmax 15, rmin -1, rdelta 0.1, 20 steps, squared error), vectorized over sub-blocks.
It reproduces the C float32 arithmetic operation by operation, so its bytes equal llama.cpp's:
sub-blocks are laid out transposed as (32, n) so every sum over 32 values is accumulated in the
C loop's order, one row at a time (numpy's own sum would regroup terms pairwise).

quantize_blocks runs the same arithmetic compiled from kernels.c (native.py) when a C compiler is
available; this port is the fallback, and the reference the compiled kernel must match at load.
"""

from __future__ import annotations

import numpy as np

from . import native

NMAX = 15
RMIN = np.float32(-1.0)
RDELTA = np.float32(0.1)
NSTEP = 20


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int (round half to even via the 1.5 * 2**23 trick), bit for bit."""
    t = v + np.float32(12582912.0)
    return (t.view(np.int32) & 0x007FFFFF) - 0x00400000


# Below this magnitude nearest_int equals np.rint; beyond 2**22 the C trick returns garbage, which
# we reproduce exactly (slowly) rather than assume it cannot happen.
_RINT_SAFE = np.float32(4.0e6)


def _levels(x: np.ndarray, mn: np.ndarray, iscale: np.ndarray, bound: np.ndarray, out: np.ndarray) -> None:
    """out = clip(nearest_int(iscale * (x - mn)), 0, NMAX) as float32, column-wise scalars.

    `bound` is an upper bound of |x - mn| per column, to prove the fast rounding path exact.
    """
    np.subtract(x, mn, out=out)
    out *= iscale
    if np.any(np.abs(iscale) * bound >= _RINT_SAFE):
        out[...] = _nearest_int(out)
    else:
        np.rint(out, out=out)
    np.clip(out, np.float32(0), np.float32(NMAX), out=out)


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in C loop order. For (32, m >= 2) arrays numpy reduces axis 0 row by row,
    one vector add per row, never pairwise (tests check this against an explicit loop)."""
    assert a.ndim == 2 and a.shape[1] >= 2
    return np.add.reduce(a, axis=0)


def _weighted_sq_error(w, x, scale, lv, mn, tmp):
    """sum of w * (scale * l + mn - x)**2 over each column, in the C operation order."""
    np.multiply(lv, scale, out=tmp)
    tmp += mn
    tmp -= x
    tmp *= tmp
    tmp *= w
    return _seq_sum(tmp)


def _make_qkx2_quants(x: np.ndarray, w: np.ndarray):
    """make_qkx2_quants over columns of x (32, m). Returns (levels (32, m), scale, the_min)."""
    lv, wl, tmp = (np.empty_like(x) for _ in range(3))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mx = x.max(axis=0)
        xmin = x.min(axis=0)
        mn = np.where(xmin > 0, np.float32(0), xmin)
        flat = mx == mn
        sum_w = _seq_sum(w)
        sum_x = _seq_sum(np.multiply(w, x, out=tmp))

        def levels(iscale, mn, out):
            # |x - mn| <= max(|mx - mn|, |xmin - mn|) bounds |iscale * (x - mn)| per column.
            bound = np.where(flat, np.float32(0), np.maximum(np.abs(mx - mn), np.abs(xmin - mn)))
            _levels(x, mn, iscale, bound, out)

        iscale = np.float32(NMAX) / (mx - mn)
        scale = np.float32(1) / iscale
        levels(iscale, mn, lv)
        best_err = _weighted_sq_error(w, x, scale, lv, mn, tmp)
        # Levels are a pure function of (iscale, min) per column: remember the winning pair and
        # rebuild the best levels once at the end instead of copying them at every step.
        best_iscale, best_shift = iscale, mn
        for step in range(NSTEP + 1):
            # The C code divides by (max - min) with min already replaced by the best fit so far.
            iscale = (RMIN + RDELTA * np.float32(step) + np.float32(NMAX)) / (mx - mn)
            levels(iscale, mn, lv)
            np.multiply(w, lv, out=wl)
            sum_l = _seq_sum(wl)
            sum_l2 = _seq_sum(np.multiply(wl, lv, out=tmp))
            sum_xl = _seq_sum(np.multiply(wl, x, out=tmp))
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            this_min = np.where(clamp, np.float32(0), this_min)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            err = _weighted_sq_error(w, x, this_scale, lv, this_min, tmp)
            better = (det > 0) & (err < best_err) & ~flat
            best_iscale = np.where(better, iscale, best_iscale)
            best_shift = np.where(better, mn, best_shift)
            best_err = np.where(better, err, best_err)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
        levels(best_iscale, best_shift, lv)
    lv[:, flat] = 0
    scale = np.where(flat, np.float32(0), scale)
    return lv, scale, -mn


def _to_6bit(values: np.ndarray, top: np.ndarray) -> np.ndarray:
    """nearest_int(63 / top * v) stored to uint8 and capped at 63, per super-block row."""
    with np.errstate(divide="ignore"):
        inv = np.where(top > 0, np.float32(63) / top, np.float32(0))
    return np.minimum(_nearest_int(inv[:, None] * values) & 0xFF, 63).astype(np.uint8)


def quantize_blocks(blocks: np.ndarray, out: np.ndarray) -> None:
    """Quantize (n, block_elems) float32 into (n, block_bytes): the compiled kernel, else the numpy port."""
    if not native.run("q4_k", blocks, out):
        quantize_blocks_numpy(blocks, out)


def quantize_blocks_numpy(blocks: np.ndarray, out: np.ndarray) -> None:
    n = blocks.shape[0]
    x = blocks.reshape(n * 8, 32).T.copy()  # (32, sub-blocks), C order
    sum_x2 = _seq_sum(x * x)
    av_x = np.sqrt(sum_x2 / np.float32(32))
    w = av_x + np.abs(x)
    lv, scales, mins = _make_qkx2_quants(x, w)

    scales = scales.reshape(n, 8)
    mins = mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1), np.float32(0))
    max_min = np.maximum(mins.max(axis=1), np.float32(0))
    ls = _to_6bit(scales, max_scale)
    lm = _to_6bit(mins, max_min)
    with np.errstate(over="ignore"):  # beyond f16 range becomes inf, as in ggml
        d16 = (max_scale / np.float32(63)).astype(np.float16)
        dmin16 = (max_min / np.float32(63)).astype(np.float16)

    # Re-quantize with the rounded (6-bit, f16) scales; sub-blocks whose scale is 0 keep the
    # levels found by the search, as the C code's `continue` does.
    d = (d16.astype(np.float32)[:, None] * ls).reshape(-1)
    dm = (dmin16.astype(np.float32)[:, None] * lm).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        final = np.clip(_nearest_int((x + dm) / d), 0, NMAX)
    lv = np.where(d != 0, final, lv).astype(np.uint8)

    q = lv.T.reshape(n, 4, 2, 32)
    out[:, 0:2] = d16.view(np.uint8).reshape(n, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(n, 2)
    out[:, 4:8] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 8:12] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 12:16] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    out[:, 16:] = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n, 128)


def _scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for all eight sub-blocks: (n, 12) bytes -> two (n, 8) arrays."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc, mn


def dequantize_blocks(raw: np.ndarray, out: np.ndarray) -> None:
    n = raw.shape[0]
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = _scale_min(raw[:, 4:16])
    dl = (d * sc).reshape(n, 8, 1)
    ml = (dmin * mn).reshape(n, 8, 1)
    qs = raw[:, 16:].reshape(n, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
    with np.errstate(invalid="ignore"):  # inf scales give NaN, as in ggml
        np.subtract(dl * q, ml, out=out.reshape(n, 8, 32))
