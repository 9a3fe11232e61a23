"""The normalisations of the supported families, by `Hyperparams.norm`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .row_ops import rms_norm


@dataclass
class Norm:
    weight: torch.Tensor
    bias: torch.Tensor | None = None


def apply_norm(kind: str, x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    if kind == "layer":
        return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps)
    if kind == "rms":
        if x.dtype == torch.float32:
            fast = rms_norm(x, norm.weight, eps)
            return fast if fast is not None else F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
        # like transformers: normalize in float32, round to the model dtype, then scale
        return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
    if kind == "none":  # MobileBERT's NoNorm: an elementwise affine map, no statistics
        return x * norm.weight + norm.bias if norm.bias is not None else x * norm.weight
    raise ValueError(f"unknown norm kind {kind!r}")
