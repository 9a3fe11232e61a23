"""The per-token row operations of decoding, in matmul.c: RMS norm and single-query attention.

On one token, torch's F.rms_norm and F.scaled_dot_product_attention spend most of their time in
dispatch and in waking OpenMP threads (~35 and ~65 us a call on 2 cores, 4 ms of a 33 ms float32
SmolLM2 step); the C loops take a few microseconds. Each function returns None where it does not
apply (no compiled library, not float32 on CPU, a width that is not a multiple of 16), and the
caller runs torch's operation instead. Results agree with torch's to float32 rounding: only the
order of the float32 sums differs.
"""

from __future__ import annotations

import torch

from .native import library


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """x * rsqrt(mean(x^2, -1) + eps) * weight, float32 on CPU."""
    width = x.shape[-1]
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or width % 16:
        return None
    lib = library()
    if lib is None:
        return None
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    lib.rms_norm_rows(x.data_ptr(), weight.data_ptr(), x.numel() // width, width, eps, y.data_ptr())
    return y


def attend_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, filled: int,
               scale: float) -> torch.Tensor | None:
    """Causal attention of one new token: q [B, heads, 1, dim] over the first `filled` slots of the
    cache buffers keys, values [B, kv_heads, max_len, dim]. Returns [B, heads, 1, dim]."""
    batch, heads, length, dim = q.shape
    if (length != 1 or q.device.type != "cpu" or dim % 16
            or any(t.dtype != torch.float32 for t in (q, keys, values))
            or not (keys.is_contiguous() and values.is_contiguous())):
        return None
    lib = library()
    if lib is None:
        return None
    q = q.contiguous()
    out = torch.empty_like(q)
    kv_heads, max_len = keys.shape[1], keys.shape[2]
    if lib.attend_one(q.data_ptr(), keys.data_ptr(), values.data_ptr(), batch, heads, kv_heads, filled, max_len, dim,
                      scale, out.data_ptr()):
        return None
    return out
