"""One decoder-only transformer for every supported family, configured by `Hyperparams`.

Families differ in a few switches, all read from the hyperparameters: RMSNorm or LayerNorm, rotary
(full or partial), learned or ALiBi positions, sequential or parallel residual, gated (SwiGLU) or
plain MLP, biases, multi-head / grouped / multi-query attention. An architecture module binds its
checkpoint's tensors to `DecoderWeights` (QKV and gate+up fused along the output rows) and the
numerics follow transformers' implementation of that family.
"""

from __future__ import annotations

from collections.abc import Callable

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..arch.base import Hyperparams
from .activations import ACTIVATIONS
from .generate import generate, left_pad
from .kv_cache import KVCache
from .norms import Norm, apply_norm
from .packed import embedding, linear
from .rope import Rotary, apply_rotary
from .row_ops import attend_one
from .tokenizer import Tokenizer
from .weights import linear_layout


@dataclass
class DecoderLayer:
    attn_norm: Norm
    qkv: Any                          # rows: q (heads * head_dim), k, v (kv_heads * head_dim each);
                                      # linear weights are tensors or packed blocks (runtime.packed)
    qkv_bias: torch.Tensor | None
    o: Any
    o_bias: torch.Tensor | None
    mlp_norm: Norm | None             # None: the MLP reads attn_norm's output (parallel residual)
    up: Any                           # gated: gate rows then up rows
    up_bias: torch.Tensor | None
    down: Any
    down_bias: torch.Tensor | None


@dataclass
class DecoderWeights:
    embed: Any                        # [vocab, hidden]
    layers: list[DecoderLayer]
    final_norm: Norm
    lm_head: Any                      # [vocab, hidden] (the embedding itself when tied)
    lm_head_bias: torch.Tensor | None = None
    positions: torch.Tensor | None = None      # learned position embeddings [max_positions, hidden]
    alibi_slopes: torch.Tensor | None = None   # [heads], for positions == "alibi"


def attention_mask(key_valid: torch.Tensor | None, start: int, length: int,
                   window: int | None) -> torch.Tensor | None:
    """Boolean SDPA mask [B, 1, T, S] (True = attend) for queries at slots start..start+T-1 over keys
    0..S-1, or None when plain causal attention (is_causal for T > 1, nothing for T == 1) is exact."""
    total = start + length
    padded = key_valid is not None and not bool(key_valid.all())
    windowed = window is not None and total > window
    if not padded and not windowed and (start == 0 or length == 1):
        return None
    device = key_valid.device if key_valid is not None else None
    q_slot = torch.arange(start, total, device=device)[:, None]
    k_slot = torch.arange(total, device=device)[None, :]
    allowed = k_slot <= q_slot
    if window is not None:
        allowed &= (q_slot - k_slot) < window
    allowed = allowed[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    # A padding query would see no key at all and SDPA would return NaN, which then leaks through
    # 0 * NaN into real rows; let every query see itself.
    return allowed | (k_slot == q_slot)


class DecoderModel:
    kind = "decoder"

    def __init__(self, hp: Hyperparams, weights: DecoderWeights, tokenizer: Tokenizer, config: dict[str, Any],
                 device: torch.device, dtype: torch.dtype):
        self.hp, self.config, self.tokenizer = hp, config, tokenizer
        self.device, self.dtype = device, dtype
        self.num_heads, self.num_kv_heads, self.head_dim = hp.num_heads, hp.num_kv_heads, hp.head_dim
        self.vocab_size, self.max_positions, self.hidden_size = hp.vocab_size, hp.max_positions, hp.hidden_size
        if hp.rope_scaling.get("rope_type") == "dynamic":  # NTK scaling exists to run past the trained length
            self.max_positions = int(hp.max_positions * float(hp.rope_scaling["factor"]))
        self.act = ACTIVATIONS[hp.activation]
        self.positions = weights.positions
        self.layers = weights.layers
        for layer in self.layers:
            layer.qkv, layer.o = linear_layout(layer.qkv, device), linear_layout(layer.o, device)
            layer.up, layer.down = linear_layout(layer.up, device), linear_layout(layer.down, device)
        self.final_norm = weights.final_norm
        # tied: the lookup wants rows of the embedding, the head wants the matmul layout (a copy at
        # fp32 for MKL); a kernel object (packed blocks, FloatLinear) serves the lookup too, so the
        # matrix is resident once
        tied = weights.lm_head is weights.embed
        self.lm_head, self.lm_head_bias = linear_layout(weights.lm_head, device), weights.lm_head_bias
        self.embed = self.lm_head if tied and not isinstance(self.lm_head, torch.Tensor) else weights.embed
        self.windows = list(hp.sliding_windows) or [None] * hp.num_layers
        rope = {"rope_type": "default", **hp.rope_scaling, "rope_theta": hp.rope_theta}
        self.rotary = Rotary(rope, hp.rotary_dims, hp.max_positions, device, dtype) if hp.positions == "rope" else None
        self.alibi_slopes = weights.alibi_slopes
        self.scale = hp.head_dim ** -0.5

    def _norm(self, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        return apply_norm(self.hp.norm, x, norm, self.hp.norm_eps)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(len(self.layers), batch, self.num_kv_heads, max_len, self.head_dim, self.device, self.dtype)

    def _alibi_mask(self, mask: torch.Tensor | None, key_valid: torch.Tensor | None, batch: int,
                    start: int, length: int) -> torch.Tensor:
        """ALiBi as an additive SDPA mask: slope_h * (position of the key), pre-scaled because SDPA
        scales only q.k (transformers adds it before scaling)."""
        total = start + length
        assert self.alibi_slopes is not None  # called for ALiBi models only
        if key_valid is None:
            key_valid = torch.ones((batch, total), dtype=torch.bool, device=self.device)
        key_pos = ((key_valid.long().cumsum(-1) - 1) * key_valid.long())[:, None, None, :]
        bias = (self.alibi_slopes[None, :, None, None] * key_pos).to(self.dtype) * self.scale
        allowed = mask if mask is not None else attention_mask(key_valid, start, length, None)
        if allowed is None:  # plain causal
            q_slot = torch.arange(start, total, device=self.device)[:, None]
            allowed = (torch.arange(total, device=self.device)[None, :] <= q_slot)[None, None]
        return bias.masked_fill(~allowed, float("-inf"))

    def _static_mask(self, key_valid: torch.Tensor, slot: torch.Tensor, window: int | None) -> torch.Tensor:
        """One query at cache slot `slot` (a device tensor) over every slot of the cache: [B, 1, 1, S]."""
        k_slot = torch.arange(key_valid.shape[1], device=key_valid.device)
        allowed = key_valid & (k_slot <= slot)
        if window is not None:
            allowed = allowed & (slot - k_slot < window)
        return allowed[:, None, None, :]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor | None,
                cache: KVCache | None = None, start: int = 0, slot: torch.Tensor | None = None) -> torch.Tensor:
        """ids, positions [B, T]; key_valid [B, start+T] bool (None = no padding). Returns the final
        normed hidden states [B, T, hidden]. With a cache, keys/values land at slots start..start+T.

        Static shapes (runtime.static_decode): one token (T = 1) goes to cache slot `slot`, a device
        tensor, and attends over the whole cache through key_valid [B, cache length]; no step depends
        on a Python value, so a step can be captured as a CUDA graph and replayed."""
        batch, length = ids.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        x = embedding(ids, self.embed)
        if self.positions is not None:
            x = x + F.embedding(positions, self.positions)
        cos_sin = self.rotary.cos_sin(positions) if self.rotary is not None else None
        masks: dict[int | None, torch.Tensor | None]
        if slot is not None:
            assert key_valid is not None and cache is not None  # static decoding attends over the whole cache
            masks = {window: self._static_mask(key_valid, slot, window) for window in set(self.windows)}
        else:
            masks = {window: attention_mask(key_valid, start, length, window) for window in set(self.windows)}
        if self.alibi_slopes is not None:
            masks = {w: self._alibi_mask(m, key_valid, batch, start, length) for w, m in masks.items()}
        for i, layer in enumerate(self.layers):
            mask = masks[self.windows[i]]
            h = self._norm(x, layer.attn_norm)
            qkv = linear(h, layer.qkv, layer.qkv_bias)
            qk = qkv[..., : (heads + kv_heads) * dim].unflatten(-1, (heads + kv_heads, dim))
            if cos_sin is not None:
                qk = apply_rotary(qk, *cos_sin)
            q = qk[:, :, :heads].transpose(1, 2)
            k = qk[:, :, heads:].transpose(1, 2)
            v = qkv[..., (heads + kv_heads) * dim:].unflatten(-1, (kv_heads, dim)).transpose(1, 2)
            if cache is not None and slot is not None:
                k, v = cache.store_at(i, slot, k, v)
            elif cache is not None:
                k, v = cache.store(i, start, k, v)
            attn = None
            if cache is not None and slot is None and mask is None and length == 1:  # one token, plain causal
                attn = attend_one(q, cache.keys[i], cache.values[i], start + 1, self.scale)
            if attn is None:
                attn = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=mask is None and length > 1,
                    scale=self.scale, enable_gqa=heads != kv_heads)
            attn = linear(attn.transpose(1, 2).reshape(batch, length, heads * dim), layer.o, layer.o_bias)
            if self.hp.parallel_residual:
                mlp_in = h if layer.mlp_norm is None else self._norm(x, layer.mlp_norm)
                x = x + (self._mlp(layer, mlp_in) + attn)
            else:
                x = x + attn
                assert layer.mlp_norm is not None  # only parallel-residual layers may lack it
                x = x + self._mlp(layer, self._norm(x, layer.mlp_norm))
        if cache is not None and slot is None:
            cache.length = start + length
        return self._norm(x, self.final_norm)

    def _mlp(self, layer: DecoderLayer, x: torch.Tensor) -> torch.Tensor:
        up = linear(x, layer.up, layer.up_bias)
        if self.hp.gated_mlp:
            gate, up = up.chunk(2, dim=-1)
            return linear(self.act(gate) * up, layer.down, layer.down_bias)
        return linear(self.act(up), layer.down, layer.down_bias)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.lm_head, self.lm_head_bias)

    @torch.inference_mode()
    def logits(self, batch: list[list[int]], start: int = 0) -> list[torch.Tensor]:
        """Full forward without a cache; per sequence float32 CPU logits [T_i - start, vocab] of positions
        start.. (the output projection, a fifth of a small model's work per token, skips the others)."""
        ids, key_valid, positions = left_pad(batch, self.tokenizer.pad_id, self.device)
        hidden = self.forward(ids, positions, None if bool(key_valid.all()) else key_valid)
        out = []
        for row, seq in enumerate(batch):
            out.append(self.project(hidden[row, hidden.shape[1] - len(seq) + start:]).float().cpu())
        return out

    def generate(self, prompts, max_new_tokens: int = 32, **options):
        return generate(self, prompts, max_new_tokens, **options)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi head slopes of Press et al. (BLOOM/Falcon's build_alibi_tensor), float32."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, 1 + closest)]
    if closest != num_heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** p for p in range(1, 1 + 2 * min(closest, num_heads - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def build_decoder(arch: Any, source: Any, device: Any, dtype: Any, layer: Callable[[Any, int], Any],
                  embed: str, final_norm: str, **extras: Callable[[Any], Any]) -> Any:
    """The runtime model of a decoder family: what every family shares around its own layer wiring.
    `layer(w, i)` builds layer i's DecoderLayer from the WeightLoader `w`; `embed` and `final_norm` name
    the token embedding and the final norm; the LM head is the embedding when tied, else
    `lm_head.weight`; `extras` are further DecoderWeights fields, each read from `w`."""
    from .tokenizer import Tokenizer
    from .weights import WeightLoader

    w = WeightLoader(source, device, dtype, arch.tensors())
    layers = [layer(w, i) for i in range(arch.hp.num_layers)]
    embedding = w.get(embed)
    weights = DecoderWeights(embed=embedding, layers=layers, final_norm=w.norm(final_norm),
                             lm_head=embedding if arch.hp.tied_embeddings else w.get("lm_head.weight"),
                             **{name: read(w) for name, read in extras.items()})
    tokenizer = Tokenizer(source.tokenizer_json, source.tokenizer_config, arch.config, source.path)
    return DecoderModel(arch.hp, weights, tokenizer, arch.config, device, dtype)
