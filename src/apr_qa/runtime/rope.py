"""Rotary position embeddings, with the inverse-frequency formulas of transformers' modeling_rope_utils.

Partial rotary (Phi, StableLM) rotates the first `dims` values of each head and passes the rest.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UnsupportedError

from ..arch.base import ROPE_TYPES


def _default(dims: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.int64).float() / dims))


def inverse_frequencies(params: dict[str, Any], dims: int, max_positions: int,
                        seq_len: int | None = None) -> torch.Tensor:
    kind, base = params["rope_type"], float(params["rope_theta"])
    if kind == "default":
        return _default(dims, base)
    if kind == "linear":
        return _default(dims, base) / float(params["factor"])
    if kind == "freq_factors":  # llama.cpp's rope_freqs: theta_i / factor_i
        factors = torch.tensor(params["freq_factors"], dtype=torch.float32)
        if factors.numel() != dims // 2:
            raise UnsupportedError(f"{factors.numel()} rope frequency factors for {dims // 2} rotary pairs")
        return _default(dims, base) / factors
    if kind == "dynamic":  # NTK-aware: the base grows once a sequence passes the trained length
        factor = float(params["factor"])
        seq_len = max(seq_len or max_positions, max_positions)
        return _default(dims, base * ((factor * seq_len / max_positions) - (factor - 1)) ** (dims / (dims - 2)))
    return _llama3(_default(dims, base), params, max_positions)


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any], max_positions: int) -> torch.Tensor:
    factor = float(params["factor"])
    low_freq_factor = float(params["low_freq_factor"])
    high_freq_factor = float(params["high_freq_factor"])
    old_context = params.get("original_max_position_embeddings", max_positions)
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class Rotary:
    """cos/sin for given positions, in the half-split layout (rotate_half) that HF weights use."""

    def __init__(self, params: dict[str, Any], dims: int, max_positions: int, device: torch.device, dtype: torch.dtype):
        if params["rope_type"] not in ROPE_TYPES:
            raise UnsupportedError(f"rope_type {params['rope_type']!r} is not supported ({', '.join(ROPE_TYPES)})")
        self.params, self.dims, self.max_positions = params, dims, max_positions
        self.device, self.dtype = device, dtype
        self.original = inverse_frequencies(params, dims, max_positions).to(device)
        self.inv_freq, self.cached_len = self.original, max_positions

    def _dynamic_update(self, positions: torch.Tensor) -> None:
        """transformers' dynamic_rope_update: frequencies follow the longest position seen, and
        return to the trained ones when a sequence fits the trained length again."""
        seq_len = int(positions.max()) + 1
        if seq_len > self.cached_len:
            self.inv_freq = inverse_frequencies(self.params, self.dims, self.max_positions, seq_len).to(self.device)
            self.cached_len = seq_len
        if seq_len < self.max_positions < self.cached_len:
            self.inv_freq, self.cached_len = self.original, self.max_positions

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, signed sin, each [B, T, 1, dims]. The sign folds rotate_half's
        negation into sin, so rotation is x*cos + swap_halves(x)*sin."""
        if self.params["rope_type"] == "dynamic":
            self._dynamic_update(positions)
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        cos = torch.cat((cos, cos), dim=-1)
        sin = torch.cat((-sin, sin), dim=-1)
        return cos[:, :, None, :].to(self.dtype), sin[:, :, None, :].to(self.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, head_dim]; the first cos.shape[-1] values of each head rotate."""
    dims = cos.shape[-1]
    rot = x if dims == x.shape[-1] else x[..., :dims]
    swapped = rot.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    rotated = torch.addcmul(rot * cos, swapped, sin)
    return rotated if dims == x.shape[-1] else torch.cat((rotated, x[..., dims:]), dim=-1)
