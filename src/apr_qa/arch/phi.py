"""Phi-1, Phi-1.5 and Phi-2 (transformers' `phi`): LayerNorm with bias, partial rotary (the first
`partial_rotary_factor` of each head rotates), attention and MLP in parallel off one shared
LayerNorm, biases on every linear layer including the LM head, gelu_new MLP.

GGUF: llama.cpp's Phi2Model keeps q/k/v separate and in HF row order (GGML's NEOX RoPE rotates
halves like HF), so no row order is needed. Its metadata records `rope.dimension_count` (rotary dims
per head), `feed_forward_length` as 4 * hidden (true of every released Phi-1/1.5/2) and
`head_count_kv` equal to `head_count`."""

from __future__ import annotations

import math
from typing import Any

from ..errors import UnsupportedError
from . import register
from .base import (Architecture, Hyperparams, gguf_hparams, gguf_special_tokens, partial_rotary_factor,
                   require, rope_config, write_gguf_basics, write_gguf_rope_scaling)


def rotary_factor(rotary_dims: int, head_dim: int) -> float:
    """The partial_rotary_factor for which transformers' int(head_dim * factor) gives rotary_dims back
    (a plain quotient can land one ulp low and floor to rotary_dims - 1)."""
    factor = rotary_dims / head_dim
    while int(head_dim * factor) < rotary_dims:
        factor = math.nextafter(factor, math.inf)
    return factor


@register
class Phi(Architecture):
    hf_names = ("PhiForCausalLM",)
    model_types = ("phi",)
    gguf_arch = "PHI2"
    family = "Phi"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        if config.get("model_type", "phi") != "phi":
            # microsoft's pre-transformers remote code ("phi-msft"): transformer.h.N.mixer.Wqkv names
            raise UnsupportedError(f"Phi model_type {config['model_type']!r} (remote-code layout) is not supported; "
                                   "use a checkpoint converted to transformers' phi layout")
        if config.get("qk_layernorm"):
            raise UnsupportedError("Phi with qk_layernorm is not supported")
        hidden, heads = require(config, "hidden_size"), require(config, "num_attention_heads")
        head_dim = config.get("head_dim") or hidden // heads
        theta, scaling = rope_config(config)
        return Hyperparams(
            kind="decoder", hidden_size=hidden, num_layers=require(config, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
            intermediate_size=require(config, "intermediate_size"), vocab_size=require(config, "vocab_size"),
            max_positions=int(config.get("max_position_embeddings") or 2048),
            norm="layer", norm_eps=float(config.get("layer_norm_eps", 1e-5)),
            activation=config.get("hidden_act", "gelu_new"), gated_mlp=False, positions="rope",
            # transformers' PhiConfig defaults the factor to 0.5 when a config omits it
            rotary_dims=int(head_dim * partial_rotary_factor(config, 0.5)), rope_theta=theta, rope_scaling=scaling,
            parallel_residual=True, attention_bias=True, mlp_bias=True,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        hidden, inter = hp.hidden_size, hp.intermediate_size
        q_out, kv_out = hp.num_heads * hp.head_dim, hp.num_kv_heads * hp.head_dim
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (hp.vocab_size, hidden)}
        for i in range(hp.num_layers):
            p = f"model.layers.{i}."
            linears = {"self_attn.q_proj": (q_out, hidden), "self_attn.k_proj": (kv_out, hidden),
                       "self_attn.v_proj": (kv_out, hidden), "self_attn.dense": (hidden, q_out),
                       "mlp.fc1": (inter, hidden), "mlp.fc2": (hidden, inter)}
            out[p + "input_layernorm.weight"] = out[p + "input_layernorm.bias"] = (hidden,)
            for name, shape in linears.items():
                out[p + name + ".weight"], out[p + name + ".bias"] = shape, shape[:1]
        out["model.final_layernorm.weight"] = out["model.final_layernorm.bias"] = (hidden,)
        if not hp.tied_embeddings:
            out["lm_head.weight"] = (hp.vocab_size, hidden)
        out["lm_head.bias"] = (hp.vocab_size,)  # the head keeps its bias even when its weight is tied
        return out

    def optional(self, name: str) -> bool:
        return name == "lm_head.weight"  # tied checkpoints sometimes store the head anyway

    def dropped(self, name: str) -> bool:
        return name.endswith("rotary_emb.inv_freq")

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        get, need = gguf_hparams(meta, "phi2")
        hidden, heads = need("embedding_length"), need("attention.head_count")
        rot_dims = get("rope.dimension_count", hidden // heads // 2)
        tokens = meta.get("tokenizer.ggml.tokens") or []
        cfg: dict[str, Any] = {
            "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_act": "gelu_new",
            "hidden_size": hidden, "intermediate_size": need("feed_forward_length"),
            "num_hidden_layers": need("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": get("attention.head_count_kv", heads),
            "layer_norm_eps": get("attention.layer_norm_epsilon", 1e-5),
            "partial_rotary_factor": rotary_factor(rot_dims, hidden // heads),
            "rope_theta": get("rope.freq_base", 10000.0), "max_position_embeddings": get("context_length", 2048),
            "vocab_size": get("vocab_size") or len(tokens),
            "qk_layernorm": False, "tie_word_embeddings": "output.weight" not in tensor_names,
        }
        return {**cfg, **gguf_special_tokens(meta)}

    def write_gguf_metadata(self, writer: Any) -> list[str]:
        """Phi2Model.set_gguf_parameters: counts, LayerNorm epsilon, rope.dimension_count (rotary dims per
        head), no BOS added (a tokenizer_config that says otherwise overrides it, as in the converter)."""
        write_gguf_basics(writer, self.hp)
        write_gguf_rope_scaling(writer, self.hp, self.family)
        writer.add_rope_dimension_count(self.hp.rotary_dims)
        writer.add_add_bos_token(False)
        return []

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.decoder import DecoderLayer, build_decoder

        def layer(w: Any, i: int) -> DecoderLayer:
            p = f"model.layers.{i}."
            qkv = [p + f"self_attn.{n}_proj" for n in "qkv"]
            return DecoderLayer(
                attn_norm=w.norm(p + "input_layernorm"),
                qkv=w.fused([n + ".weight" for n in qkv]), qkv_bias=w.fused([n + ".bias" for n in qkv]),
                o=w.get(p + "self_attn.dense.weight"), o_bias=w.dense(p + "self_attn.dense.bias"),
                mlp_norm=None,  # the MLP reads input_layernorm's output too
                up=w.get(p + "mlp.fc1.weight"), up_bias=w.dense(p + "mlp.fc1.bias"),
                down=w.get(p + "mlp.fc2.weight"), down_bias=w.dense(p + "mlp.fc2.bias"),
            )

        return build_decoder(self, source, device, dtype, layer, "model.embed_tokens.weight", "model.final_layernorm",
                             lm_head_bias=lambda w: w.dense("lm_head.bias"))
