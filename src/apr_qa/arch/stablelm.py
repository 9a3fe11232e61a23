"""StableLM (transformers' `stablelm`: StableLM-3B-4E1T, StableLM 2, Zephyr): LayerNorm with bias,
partial rotary (default factor 0.25), SwiGLU MLP without biases, optional q/k/v biases
(`use_qkv_bias`), optional parallel residual (`use_parallel_residual`: attention and MLP off the
one input LayerNorm, no post-attention norm).

GGUF: llama.cpp's StableLMModel keeps q/k/v in HF row order (NEOX RoPE), records the rotary dims as
`rope.dimension_count`; its runtime takes the residual form from the tensors (no `ffn_norm`:
parallel), and so does `config_from_gguf`."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedError
from . import register
from .base import (Architecture, Hyperparams, gguf_hparams, gguf_special_tokens, partial_rotary_factor,
                   require, rope_config, write_gguf_basics, write_gguf_rope_scaling)
from .phi import rotary_factor


@register
class StableLm(Architecture):
    hf_names = ("StableLmForCausalLM",)
    model_types = ("stablelm",)
    gguf_arch = "STABLELM"
    family = "StableLM"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        if config.get("qk_layernorm"):
            raise UnsupportedError("StableLM with qk_layernorm (per-head q/k LayerNorms) is not supported")
        hidden, heads = require(config, "hidden_size"), require(config, "num_attention_heads")
        head_dim = hidden // heads  # transformers' StableLM ignores any head_dim key
        theta, scaling = rope_config(config)
        return Hyperparams(
            kind="decoder", hidden_size=hidden, num_layers=require(config, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
            intermediate_size=require(config, "intermediate_size"), vocab_size=require(config, "vocab_size"),
            max_positions=int(config.get("max_position_embeddings") or 4096),
            norm="layer", norm_eps=float(config.get("layer_norm_eps", 1e-5)),
            activation=config.get("hidden_act", "silu"), gated_mlp=True, positions="rope",
            # transformers' StableLmConfig defaults the factor to 0.25 when a config omits it
            rotary_dims=int(head_dim * partial_rotary_factor(config, 0.25)), rope_theta=theta, rope_scaling=scaling,
            parallel_residual=bool(config.get("use_parallel_residual", False)),
            attention_bias=bool(config.get("use_qkv_bias", False)), mlp_bias=False,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        hidden, inter = hp.hidden_size, hp.intermediate_size
        q_out, kv_out = hp.num_heads * hp.head_dim, hp.num_kv_heads * hp.head_dim
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (hp.vocab_size, hidden)}
        for i in range(hp.num_layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = out[p + "input_layernorm.bias"] = (hidden,)
            for name, rows in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                out[p + f"self_attn.{name}_proj.weight"] = (rows, hidden)
                if hp.attention_bias:  # use_qkv_bias: q/k/v only, o_proj never has one
                    out[p + f"self_attn.{name}_proj.bias"] = (rows,)
            out[p + "self_attn.o_proj.weight"] = (hidden, q_out)
            if not hp.parallel_residual:
                out[p + "post_attention_layernorm.weight"] = out[p + "post_attention_layernorm.bias"] = (hidden,)
            out[p + "mlp.gate_proj.weight"] = out[p + "mlp.up_proj.weight"] = (inter, hidden)
            out[p + "mlp.down_proj.weight"] = (hidden, inter)
        out["model.norm.weight"] = out["model.norm.bias"] = (hidden,)
        if not hp.tied_embeddings:
            out["lm_head.weight"] = (hp.vocab_size, hidden)
        return out

    def optional(self, name: str) -> bool:
        return name == "lm_head.weight"  # tied checkpoints sometimes store the head anyway

    def dropped(self, name: str) -> bool:
        return name.endswith("rotary_emb.inv_freq")

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        get, need = gguf_hparams(meta, "stablelm")
        hidden, heads = need("embedding_length"), need("attention.head_count")
        head_dim = hidden // heads
        tokens = meta.get("tokenizer.ggml.tokens") or []
        cfg: dict[str, Any] = {
            "architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "hidden_act": "silu",
            "hidden_size": hidden, "intermediate_size": need("feed_forward_length"),
            "num_hidden_layers": need("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": get("attention.head_count_kv", heads),
            "layer_norm_eps": get("attention.layer_norm_epsilon", 1e-5),
            "partial_rotary_factor": rotary_factor(get("rope.dimension_count", head_dim // 4), head_dim),
            "rope_theta": get("rope.freq_base", 10000.0), "max_position_embeddings": get("context_length", 4096),
            "vocab_size": get("vocab_size") or len(tokens),
            "use_qkv_bias": "blk.0.attn_q.bias" in tensor_names,
            # llama.cpp decides by the tensors, not by the use_parallel_residual key
            "use_parallel_residual": "blk.0.ffn_norm.weight" not in tensor_names,
            "qk_layernorm": "blk.0.attn_q_norm.weight" in tensor_names,
            "tie_word_embeddings": "output.weight" not in tensor_names,
        }
        return {**cfg, **gguf_special_tokens(meta)}

    def write_gguf_metadata(self, writer: Any) -> list[str]:
        """StableLMModel.set_gguf_parameters: counts, rope.dimension_count (rotary dims per head),
        use_parallel_residual, LayerNorm epsilon (llama.cpp takes the residual form from the tensors)."""
        write_gguf_basics(writer, self.hp)
        write_gguf_rope_scaling(writer, self.hp, self.family)
        writer.add_rope_dimension_count(self.hp.rotary_dims)
        writer.add_parallel_residual(self.hp.parallel_residual)
        return []

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.decoder import DecoderLayer, build_decoder

        hp = self.hp

        def layer(w: Any, i: int) -> DecoderLayer:
            p = f"model.layers.{i}."
            qkv = [p + f"self_attn.{n}_proj" for n in "qkv"]
            mlp = [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
            return DecoderLayer(
                attn_norm=w.norm(p + "input_layernorm"),
                qkv=w.fused([n + ".weight" for n in qkv]),
                qkv_bias=w.fused([n + ".bias" for n in qkv]) if hp.attention_bias else None,
                o=w.get(p + "self_attn.o_proj.weight"), o_bias=None,
                # parallel residual: the MLP reads input_layernorm's output (no post-attention norm)
                mlp_norm=None if hp.parallel_residual else w.norm(p + "post_attention_layernorm"),
                up=w.fused(mlp), up_bias=None, down=w.get(p + "mlp.down_proj.weight"), down_bias=None,
            )

        return build_decoder(self, source, device, dtype, layer, "model.embed_tokens.weight", "model.norm")
