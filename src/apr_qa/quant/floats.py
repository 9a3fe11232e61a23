"""F32, F16 and BF16 storage, little-endian. Arrays arrive as (n, 1) "blocks" of one element.

F16 rounds to nearest even (IEEE, numpy's cast). BF16 follows ggml's `ggml_compute_fp32_to_bf16`
(and gguf-py): round to nearest even on the upper 16 bits, NaN forced quiet with its sign kept.
"""

from __future__ import annotations

import numpy as np


def quantize_f32(x: np.ndarray, out: np.ndarray) -> None:
    out[...] = x.view(np.uint8)


def dequantize_f32(raw: np.ndarray, out: np.ndarray) -> None:
    out[...] = raw.view(np.float32)


def quantize_f16(x: np.ndarray, out: np.ndarray) -> None:
    with np.errstate(over="ignore"):  # beyond f16 range becomes inf, as IEEE rounding says
        out.view(np.float16)[...] = x


def dequantize_f16(raw: np.ndarray, out: np.ndarray) -> None:
    out[...] = raw.view(np.float16)


def quantize_bf16(x: np.ndarray, out: np.ndarray) -> None:
    n = x.view(np.uint32)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # uint32 cannot overflow here: the largest finite value rounds up to 0xFF80xxxx at most.
    rounded = (n + (np.uint32(0x7FFF) + ((n >> 16) & np.uint32(1)))) >> 16
    bits = np.where(nan, (n >> 16) | np.uint32(0x40), rounded)
    out.view(np.uint16)[...] = bits


def dequantize_bf16(raw: np.ndarray, out: np.ndarray) -> None:
    out.view(np.uint32)[...] = raw.view(np.uint16).astype(np.uint32) << 16
