"""GGML Q4_0: 32 weights in 18 bytes (f16 scale d, 16 bytes of nibbles), value = d * (q - 8).

Byte-identical to ggml's `quantize_row_q4_0_ref`: d = max / -8 where max is the first element of
largest magnitude (sign kept), q = min(15, trunc(x / d + 8.5)); elements 0-15 go in the low
nibbles, 16-31 in the high nibbles.

quantize_blocks runs the same arithmetic compiled from kernels.c (native.py) when a C compiler is
available. The port here is the fallback, and the reference the compiled kernel must match at load:
it runs on torch (in-place, SIMD, integer reductions) over numpy views of the same memory, the
per-block scalars in numpy so that their IEEE division is exactly C's.
"""

from __future__ import annotations

import numpy as np

from . import native


def _signed_absmax(blocks: np.ndarray, x) -> np.ndarray:
    """Per block, the first element of largest magnitude, as ggml's scan picks it."""
    import torch

    # int32 max of the bits: the largest x when some x >= +0, else the most negative x (either
    # way the right `hi` below), several times faster than a float reduction.
    hi = x.view(torch.int32).amax(1).view(torch.float32).numpy()
    lo = x.amin(1).numpy()
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
    """Quantize (n, block_elems) float32 into (n, block_bytes): the compiled kernel, else the numpy port."""
    if not native.run("q4_0", blocks, out):
        quantize_blocks_numpy(blocks, out)


def quantize_blocks_numpy(blocks: np.ndarray, out: np.ndarray) -> None:
    import torch

    n = blocks.shape[0]
    x = torch.from_numpy(blocks)
    d = _signed_absmax(blocks, x) / np.float32(-8)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    # Laid out (2, n, 16): elements 0-15 of every block, then 16-31, so the nibble halves are
    # contiguous for the packing below.
    y = torch.empty((2, n, 16), dtype=torch.float32)
    torch.mul(x.view(n, 2, 16).transpose(0, 1), torch.from_numpy(inv)[None, :, None], out=y)
    y.add_(8.5)
    q = y.to(torch.int8)  # C's float -> int8 truncation; y >= 0 here, so q is 0..16
    q.clamp_max_(15)
    # Nibbles never carry across bytes, so shift and merge eight at a time.
    low, high = q[0].view(torch.int64), q[1].view(torch.int64)
    high <<= 4
    low |= high
    torch.from_numpy(out[:, 2:]).copy_(q[0].view(torch.uint8))
    # |d| > 65504 becomes inf, as in ggml; torch converts with SIMD, numpy one value at a time.
    out[:, :2].view(np.uint16)[:, 0] = torch.from_numpy(d).to(torch.float16).numpy().view(np.uint16)


def dequantize_blocks(raw: np.ndarray, out: np.ndarray) -> None:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    qs = raw[:, 2:]
    q = np.empty((raw.shape[0], 32), np.int8)
    q[:, :16] = qs & np.uint8(0x0F)
    q[:, 16:] = qs >> np.uint8(4)
    q -= np.int8(8)
    with np.errstate(invalid="ignore"):  # d = inf times q = 0 is NaN, as in ggml
        np.multiply(d, q, out=out)
