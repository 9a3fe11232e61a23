"""GGML Q4_0: 32 weights in 18 bytes (f16 scale d, 16 bytes of nibbles), value = d * (q - 8).

Byte-identical to ggml's `quantize_row_q4_0_ref`: d = max / -8 where max is the first element of
largest magnitude (sign kept), q = min(15, trunc(x / d + 8.5)); elements 0-15 go in the low
nibbles, 16-31 in the high nibbles.
"""

from __future__ import annotations

import numpy as np


def _signed_absmax(blocks: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per block, the first element of largest magnitude, as ggml's scan picks it.

    `cols` is blocks transposed to (32, n): reductions over its long axis are vectorized."""
    hi = cols.max(axis=0)
    lo = cols.min(axis=0)
    picked = np.where(-lo > hi, lo, hi)
    # +a and -a both present: the first one in the block wins. All zero: ggml keeps +0.
    tie = np.flatnonzero(-lo == hi)
    if tie.size:
        sub = blocks[tie]
        first = np.abs(sub).argmax(axis=1)
        picked[tie] = sub[np.arange(tie.size), first]
        picked[tie[hi[tie] == 0]] = 0.0
    return picked


def quantize_blocks(blocks: np.ndarray, out: np.ndarray) -> None:
    # Work on the transposed (32, n) copy: per-block scalars then broadcast along long rows.
    cols = blocks.T.copy()
    d = _signed_absmax(blocks, cols) / np.float32(-8)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    cols *= inv
    cols += np.float32(8.5)
    np.minimum(cols, np.float32(15), out=cols)  # cols >= 0 here, so this equals min(15, (int8)y)
    q = cols.astype(np.uint8)
    q[16:] <<= 4
    q[16:] |= q[:16]  # element j in the low nibble, j + 16 in the high nibble
    with np.errstate(over="ignore"):  # |d| > 65504 becomes inf, as in ggml
        out[:, :2].view(np.float16)[:, 0] = d
    out[:, 2:] = q[16:].T


def dequantize_blocks(raw: np.ndarray, out: np.ndarray) -> None:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    qs = raw[:, 2:]
    q = np.empty((raw.shape[0], 32), np.int8)
    q[:, :16] = qs & np.uint8(0x0F)
    q[:, 16:] = qs >> np.uint8(4)
    q -= np.int8(8)
    with np.errstate(invalid="ignore"):  # d = inf times q = 0 is NaN, as in ggml
        np.multiply(d, q, out=out)
