"""Rotary position embeddings, with the inverse-frequency formulas of transformers' modeling_rope_utils."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UnsupportedError


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """One dict with rope_type and rope_theta, from either spelling: transformers >= 5 writes
    `rope_parameters` (theta inside), older configs write `rope_theta` plus `rope_scaling`."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def inverse_frequencies(config: dict[str, Any], head_dim: int) -> torch.Tensor:
    params = rope_parameters(config)
    kind = params["rope_type"]
    if params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedError("partial rotary embeddings are not supported")
    base = float(params["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(params["factor"])
    if kind == "llama3":
        return _llama3(inv_freq, params, config)
    raise UnsupportedError(f"rope_type {kind!r} is not supported (default, linear, llama3)")


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any], config: dict[str, Any]) -> torch.Tensor:
    factor = float(params["factor"])
    low_freq_factor = float(params["low_freq_factor"])
    high_freq_factor = float(params["high_freq_factor"])
    old_context = params.get("original_max_position_embeddings", config.get("max_position_embeddings"))
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class Rotary:
    """cos/sin for given positions, in the half-split layout (rotate_half) that HF llama weights use."""

    def __init__(self, config: dict[str, Any], head_dim: int, device: torch.device, dtype: torch.dtype):
        self.inv_freq = inverse_frequencies(config, head_dim).to(device)
        self.dtype = dtype
        self.half = head_dim // 2

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, signed sin, each [B, T, 1, head_dim]. The sign folds rotate_half's
        negation into sin, so rotation is x*cos + swap_halves(x)*sin."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        cos = torch.cat((cos, cos), dim=-1)
        sin = torch.cat((-sin, sin), dim=-1)
        return cos[:, :, None, :].to(self.dtype), sin[:, :, None, :].to(self.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, head_dim]."""
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)
