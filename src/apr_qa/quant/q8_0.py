"""GGML Q8_0: 32 weights in 34 bytes (f16 scale d, 32 x int8), value = d * q.

Byte-identical to ggml's `quantize_row_q8_0_ref` (and gguf-py): d = amax / 127, q = roundf(x / d)
with ties away from zero.

Quantizing runs on torch (in-place, SIMD, integer reductions) over numpy views of the same memory;
the per-block scalars stay in numpy so their IEEE division is exactly C's.
"""

from __future__ import annotations

import numpy as np

# Largest float32 below 0.5: trunc(a + HALF_DOWN) equals C's roundf(a) for every float32 a >= 0
# (adding 0.5 itself would round 0.49999997 up to 1).
HALF_DOWN = np.nextafter(np.float32(0.5), np.float32(0))


def quantize_blocks(blocks: np.ndarray, out: np.ndarray) -> None:
    import torch

    x = torch.from_numpy(blocks)
    mag = x.abs()
    # Non-negative floats order like their int32 bit patterns, and torch reduces int32 several
    # times faster than float32 (no NaN handling).
    amax = mag.view(torch.int32).amax(1).view(torch.float32).numpy()
    d = amax / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    # roundf(x * inv) = sign(x) * trunc(|x| * inv + HALF_DOWN), as x * inv and |x| * inv differ
    # only in sign: round the magnitude in float, restore the sign in int8 (four times less data).
    mag.mul_(torch.from_numpy(inv)[:, None])
    mag.add_(float(HALF_DOWN))
    q = mag.to(torch.int8)  # C's float -> int8 truncation
    neg = torch.from_numpy(np.signbit(blocks).view(np.int8))  # 1 where x < 0 (or -0.0: q is 0)
    q ^= -neg  # two's complement negation: -q = (q ^ -1) + 1
    torch.add(q, neg, out=torch.from_numpy(out[:, 2:]).view(torch.int8))
    # |d| > 65504 becomes inf, as in ggml; torch converts with SIMD, numpy one value at a time.
    out[:, :2].view(np.uint16)[:, 0] = torch.from_numpy(d).to(torch.float16).numpy().view(np.uint16)


def dequantize_blocks(raw: np.ndarray, out: np.ndarray) -> None:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore"):  # d = inf times q = 0 is NaN, as in ggml
        np.multiply(raw[:, 2:].view(np.int8), d, out=out)
