"""GGML Q8_0: 32 weights in 34 bytes (f16 scale d, 32 x int8), value = d * q.

Byte-identical to ggml's `quantize_row_q8_0_ref` (and gguf-py): d = amax / 127, q = roundf(x / d)
with ties away from zero.
"""

from __future__ import annotations

import numpy as np

# Largest float32 below 0.5: trunc(y + copysign(HALF_DOWN, y)) equals C's roundf(y) for every
# float32 y (adding 0.5 itself would round 0.49999997 up to 1).
HALF_DOWN = np.nextafter(np.float32(0.5), np.float32(0))
_SIGN_BIT = np.uint32(0x80000000)


def quantize_blocks(blocks: np.ndarray, out: np.ndarray) -> None:
    # Per-block max over a transposed copy: reducing the short contiguous axis is 3x slower.
    cols = blocks.T.copy()  # a fresh C-order copy: abs runs in place below
    np.abs(cols, out=cols)
    d = cols.max(axis=0) / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    y = blocks * inv[:, None]
    half = y.view(np.uint32) & _SIGN_BIT  # copysign(HALF_DOWN, y) with integer ops (SIMD)
    half |= HALF_DOWN.view(np.uint32)
    y += half.view(np.float32)
    with np.errstate(over="ignore"):  # |d| > 65504 becomes inf, as in ggml
        out[:, :2].view(np.float16)[:, 0] = d
    np.copyto(out[:, 2:].view(np.int8), y, casting="unsafe")  # C's float -> int8 truncation


def dequantize_blocks(raw: np.ndarray, out: np.ndarray) -> None:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore"):  # d = inf times q = 0 is NaN, as in ggml
        np.multiply(raw[:, 2:].view(np.int8), d, out=out)
