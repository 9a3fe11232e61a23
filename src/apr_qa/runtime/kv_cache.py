"""Preallocated key/value cache: one [batch, kv_heads, max_len, head_dim] buffer pair per layer.

Every row of a batch shares the same slot index (prompts are left-padded), so a step writes one
slice per layer and attention reads a view: no per-step allocation or concatenation.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # slots filled so far, the same for all layers once a forward pass ends

    def store(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([B, kv_heads, T, head_dim]) at slots start..start+T and return the filled views."""
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end].copy_(k)
        self.values[layer][:, :, start:end].copy_(v)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def store_at(self, layer: int, slot: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step's k, v ([B, kv_heads, 1, head_dim]) at cache slot `slot` (a one-element
        device tensor) and return the whole buffers: fixed shapes, for static decoding."""
        self.keys[layer].index_copy_(2, slot, k)
        self.values[layer].index_copy_(2, slot, v)
        return self.keys[layer], self.values[layer]
