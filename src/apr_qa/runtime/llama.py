"""Decoder-only llama family (Llama, Mistral, Qwen2, SmolLM2, TinyLlama): RMSNorm, GQA attention with RoPE,
SwiGLU MLP. Follows transformers' LlamaForCausalLM numerics; weights are fused (QKV, gate+up) at load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FormatError, UnsupportedError
from .generate import generate, left_pad
from .kv_cache import KVCache
from .rope import Rotary, apply_rotary
from .tokenizer import Tokenizer
from .weights import WeightLoader, linear_layout


@dataclass
class Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    window: int | None          # sliding-window attention span, None for full attention


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

    def __init__(self, source, device: torch.device, dtype: torch.dtype, *, qkv_bias: bool = False):
        cfg = source.config
        self.config: dict[str, Any] = cfg
        self.device, self.dtype = device, dtype
        self.tokenizer = Tokenizer(source.tokenizer_json, source.tokenizer_config, cfg, source.path)
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedError(f"hidden_act {cfg.get('hidden_act')!r} is not supported (silu)", source.path)
        try:
            hidden = cfg["hidden_size"]
            self.num_heads = cfg["num_attention_heads"]
            num_layers = cfg["num_hidden_layers"]
            inter = cfg["intermediate_size"]
            vocab = cfg["vocab_size"]
        except KeyError as exc:
            raise FormatError(f"config lacks {exc.args[0]}", source.path) from None
        self.num_kv_heads = cfg.get("num_key_value_heads") or self.num_heads
        self.head_dim = cfg.get("head_dim") or hidden // self.num_heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.max_positions = int(cfg.get("max_position_embeddings") or 2048)
        self.hidden_size, self.vocab_size = hidden, vocab
        if self.num_heads % self.num_kv_heads:
            raise FormatError(f"{self.num_heads} heads do not split into {self.num_kv_heads} kv heads", source.path)

        w = WeightLoader(source, device, dtype)
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        windows = self._sliding_windows(cfg, num_layers)
        self.embed = w.get("model.embed_tokens.weight", (vocab, hidden))
        self.layers = []
        for i in range(num_layers):
            p = f"model.layers.{i}."
            qkv_names = [p + f"self_attn.{n}_proj" for n in "qkv"]
            qkv_shapes = [(q_out, hidden), (kv_out, hidden), (kv_out, hidden)]
            mlp_names = [p + "mlp.gate_proj", p + "mlp.up_proj"]
            qkv_b = w.fused_optional([n + ".bias" for n in qkv_names], [s[:1] for s in qkv_shapes])
            if qkv_b is None and (qkv_bias or cfg.get("attention_bias")):
                raise FormatError(f"config implies attention biases but {qkv_names[0]}.bias is missing", source.path)
            self.layers.append(Layer(
                input_norm=w.get(p + "input_layernorm.weight", (hidden,)),
                qkv=linear_layout(w.fused([n + ".weight" for n in qkv_names], qkv_shapes)),
                qkv_bias=qkv_b,
                o=linear_layout(w.get(p + "self_attn.o_proj.weight", (hidden, q_out))),
                o_bias=w.get_optional(p + "self_attn.o_proj.bias", (hidden,)),
                post_norm=w.get(p + "post_attention_layernorm.weight", (hidden,)),
                gate_up=linear_layout(w.fused([n + ".weight" for n in mlp_names], [(inter, hidden)] * 2)),
                gate_up_bias=w.fused_optional([n + ".bias" for n in mlp_names], [(inter,)] * 2),
                down=linear_layout(w.get(p + "mlp.down_proj.weight", (hidden, inter))),
                down_bias=w.get_optional(p + "mlp.down_proj.bias", (hidden,)),
                window=windows[i],
            ))
        self.norm = w.get("model.norm.weight", (hidden,))
        tied = cfg.get("tie_word_embeddings", False) or not w.has("lm_head.weight")
        # tied: the lookup wants rows of the embedding, the head wants the matmul layout (a copy at fp32)
        self.lm_head = linear_layout(self.embed if tied else w.get("lm_head.weight", (vocab, hidden)))
        self.rotary = Rotary(cfg, self.head_dim, device, dtype)
        self.scale = self.head_dim ** -0.5

    @staticmethod
    def _sliding_windows(cfg: dict[str, Any], num_layers: int) -> list[int | None]:
        window = cfg.get("sliding_window")
        layer_types = cfg.get("layer_types")
        if not window:
            return [None] * num_layers
        if layer_types:
            return [window if t == "sliding_attention" else None for t in layer_types]
        if "use_sliding_window" in cfg and not cfg["use_sliding_window"]:  # Qwen2 keeps the key but off
            return [None] * num_layers
        return [window] * num_layers

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        # like transformers: normalize in float32, round to the model dtype, then scale
        return weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(len(self.layers), batch, self.num_kv_heads, max_len, self.head_dim, self.device, self.dtype)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor | None,
                cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """ids, positions [B, T]; key_valid [B, start+T] bool (None = no padding). Returns the final
        normed hidden states [B, T, hidden]. With a cache, keys/values land at slots start..start+T."""
        batch, length = ids.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary.cos_sin(positions)
        masks = {window: attention_mask(key_valid, start, length, window)
                 for window in {layer.window for layer in self.layers}}
        for i, layer in enumerate(self.layers):
            mask = masks[layer.window]
            h = self._norm(x, layer.input_norm)
            qkv = F.linear(h, layer.qkv, layer.qkv_bias)
            qk = apply_rotary(qkv[..., : (heads + kv_heads) * dim].unflatten(-1, (heads + kv_heads, dim)), cos, sin)
            q = qk[:, :, :heads].transpose(1, 2)
            k = qk[:, :, heads:].transpose(1, 2)
            v = qkv[..., (heads + kv_heads) * dim:].unflatten(-1, (kv_heads, dim)).transpose(1, 2)
            if cache is not None:
                k, v = cache.store(i, start, k, v)
            attn = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and length > 1,
                scale=self.scale, enable_gqa=heads != kv_heads)
            x = x + F.linear(attn.transpose(1, 2).reshape(batch, length, heads * dim), layer.o, layer.o_bias)
            gate, up = F.linear(self._norm(x, layer.post_norm), layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down, layer.down_bias)
        if cache is not None:
            cache.length = start + length
        return self._norm(x, self.norm)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head)

    @torch.inference_mode()
    def logits(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Full forward without a cache; per sequence float32 CPU logits [T_i, vocab]."""
        ids, key_valid, positions = left_pad(batch, self.tokenizer.pad_id, self.device)
        hidden = self.forward(ids, positions, None if bool(key_valid.all()) else key_valid)
        out = []
        for row, seq in enumerate(batch):
            out.append(self.project(hidden[row, hidden.shape[1] - len(seq):]).float().cpu())
        return out

    def generate(self, prompts, max_new_tokens: int = 32, **options):
        return generate(self, prompts, max_new_tokens, **options)


def build(source, device: torch.device, dtype: torch.dtype) -> DecoderModel:
    return DecoderModel(source, device, dtype)


def build_qwen2(source, device: torch.device, dtype: torch.dtype) -> DecoderModel:
    return DecoderModel(source, device, dtype, qkv_bias=True)
