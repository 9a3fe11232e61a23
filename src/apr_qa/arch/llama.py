"""Llama, Mistral and Qwen2 (TinyLlama, SmolLM2, ...): RMSNorm, rotary (default, linear, dynamic
or llama3 scaling), grouped-query attention, SwiGLU MLP; Mistral's sliding window; Qwen2's QKV
biases. GGUF: llama.cpp's converter permutes llama's (not Qwen2's) Q/K rows for GGML's RoPE."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import UnsupportedError
from . import register
from .base import (Architecture, Hyperparams, gguf_hparams, gguf_special_tokens, interleaved_rows,
                   require, rope_config, write_gguf_basics, write_gguf_rope_scaling)


@register
class Llama(Architecture):
    hf_names: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM", "MistralForCausalLM")
    model_types: ClassVar[tuple[str, ...]] = ("llama", "mistral")
    gguf_arch = "LLAMA"
    family = "Llama"
    qkv_bias_always = False

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        hidden, heads = require(config, "hidden_size"), require(config, "num_attention_heads")
        layers = require(config, "num_hidden_layers")
        head_dim = config.get("head_dim") or hidden // heads
        theta, scaling = rope_config(config)
        return Hyperparams(
            kind="decoder", hidden_size=hidden, num_layers=layers, num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
            intermediate_size=require(config, "intermediate_size"), vocab_size=require(config, "vocab_size"),
            max_positions=int(config.get("max_position_embeddings") or 2048),
            norm="rms", norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            activation=config.get("hidden_act", "silu"), gated_mlp=True, positions="rope",
            rotary_dims=head_dim, rope_theta=theta, rope_scaling=scaling,
            attention_bias=cls.qkv_bias_always or bool(config.get("attention_bias")),
            mlp_bias=bool(config.get("mlp_bias")),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            sliding_windows=cls._sliding_windows(config, layers),
        )

    @staticmethod
    def _sliding_windows(config: dict[str, Any], layers: int) -> tuple[int | None, ...]:
        window, layer_types = config.get("sliding_window"), config.get("layer_types")
        if not window or ("use_sliding_window" in config and not config["use_sliding_window"]):
            return ()  # Qwen2 keeps the key but switched off
        if layer_types:
            return tuple(window if t == "sliding_attention" else None for t in layer_types)
        return (window,) * layers

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        hidden, q_out, kv_out = hp.hidden_size, hp.num_heads * hp.head_dim, hp.num_kv_heads * hp.head_dim
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (hp.vocab_size, hidden)}
        for i in range(hp.num_layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = (hidden,)
            for name, rows in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                out[p + f"self_attn.{name}_proj.weight"] = (rows, hidden)
                if hp.attention_bias:
                    out[p + f"self_attn.{name}_proj.bias"] = (rows,)
            out[p + "self_attn.o_proj.weight"] = (hidden, q_out)
            if hp.attention_bias and not self.qkv_bias_always:  # llama's attention_bias covers o_proj too
                out[p + "self_attn.o_proj.bias"] = (hidden,)
            out[p + "post_attention_layernorm.weight"] = (hidden,)
            for name, shape in (("gate", (hp.intermediate_size, hidden)), ("up", (hp.intermediate_size, hidden)),
                                ("down", (hidden, hp.intermediate_size))):
                out[p + f"mlp.{name}_proj.weight"] = shape
                if hp.mlp_bias:
                    out[p + f"mlp.{name}_proj.bias"] = shape[:1]
        out["model.norm.weight"] = (hidden,)
        if not hp.tied_embeddings:
            out["lm_head.weight"] = (hp.vocab_size, hidden)
        return out

    def optional(self, name: str) -> bool:
        return name == "lm_head.weight"  # tied checkpoints sometimes store the head anyway

    def dropped(self, name: str) -> bool:
        return name.endswith("rotary_emb.inv_freq")  # a derived buffer older checkpoints saved

    def gguf_row_order(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if self.gguf_arch != "LLAMA":
            return None
        if ".self_attn.q_proj." in name:
            return interleaved_rows(shape[0], self.hp.num_heads)
        if ".self_attn.k_proj." in name:
            return interleaved_rows(shape[0], self.hp.num_kv_heads)
        return None

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        arch = cls.model_types[0]
        get, need = gguf_hparams(meta, arch)
        heads = need("attention.head_count")
        cfg: dict[str, Any] = {
            "architectures": [cls.hf_names[0]], "model_type": arch, "hidden_act": "silu",
            "hidden_size": need("embedding_length"), "intermediate_size": need("feed_forward_length"),
            "num_hidden_layers": need("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": get("attention.head_count_kv", heads),
            "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6), "rope_theta": get("rope.freq_base", 10000.0),
            "tie_word_embeddings": "output.weight" not in tensor_names,
        }
        if (head_dim := get("attention.key_length")) is not None:
            cfg["head_dim"] = head_dim
        if (ctx := get("context_length")) is not None:
            cfg["max_position_embeddings"] = ctx
        tokens = meta.get("tokenizer.ggml.tokens") or []
        cfg["vocab_size"] = get("vocab_size") or len(tokens)
        if not cls.qkv_bias_always:
            cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
            cfg["mlp_bias"] = False
        scaling = get("rope.scaling.type")
        if "rope_freqs.weight" in meta:  # llama3 scaling: GGUF keeps only the resulting per-pair divisors
            cfg["rope_scaling"] = {"rope_type": "freq_factors", "freq_factors": meta["rope_freqs.weight"]}
        elif scaling and scaling != "none":
            cfg["rope_scaling"] = {"rope_type": scaling, "factor": get("rope.scaling.factor", 1.0)}
            if (orig := get("rope.scaling.original_context_length")) is not None:
                cfg["rope_scaling"]["original_max_position_embeddings"] = orig
        return {**cfg, **gguf_special_tokens(meta)}

    def write_gguf_metadata(self, writer: Any) -> list[str]:
        """TextModel's keys, plus LlamaModel's vocab_size and rope.dimension_count (Qwen2Model adds
        neither); key/value lengths when head_dim is not hidden / heads. llama3 scaling travels as the
        rope_freqs tensor (gguf_extra_tensors), linear as keys; dynamic NTK has no llama.cpp form."""
        hp = self.hp
        kind = hp.rope_scaling.get("rope_type")
        if kind == "dynamic":
            raise UnsupportedError(f"{self.family} with rope_type 'dynamic' cannot be exported: llama.cpp's graph "
                                   "has no dynamic NTK scaling", self.path)
        write_gguf_basics(writer, hp)
        if kind not in ("llama3", "freq_factors"):
            write_gguf_rope_scaling(writer, hp, self.family)
        if self.config.get("head_dim") is not None or hp.head_dim * hp.num_heads != hp.hidden_size:
            writer.add_key_length(hp.head_dim)
            writer.add_value_length(hp.head_dim)
        if self.gguf_arch == "LLAMA":
            writer.add_vocab_size(hp.vocab_size)
            writer.add_rope_dimension_count(hp.head_dim)
        windows = sorted({w for w in hp.sliding_windows if w})
        if windows:
            return [(f"sliding window {windows} not recorded: llama.cpp's {self.gguf_name_of_arch()} graph attends "
                     "to the whole context (as after its own converter), so outputs differ past the window")]
        return []

    def gguf_extra_tensors(self) -> dict[str, np.ndarray]:
        """llama3 scaling as LlamaModel.generate_extra_tensors writes it: per rotary pair, the factor
        dividing its frequency (1 above the high-frequency cutoff, `factor` below the low one, smoothed
        between), computed in float32 as the converter does."""
        scaling = self.hp.rope_scaling
        if scaling.get("rope_type") == "freq_factors":  # read from a GGUF: written back as it came
            return {"rope_freqs.weight": np.asarray(scaling["freq_factors"], dtype=np.float32)}
        if scaling.get("rope_type") != "llama3":
            return {}
        f32 = np.float32
        dim, base = self.hp.head_dim, f32(self.hp.rope_theta)
        freqs = f32(1.0) / base ** (np.arange(0, dim, 2, dtype=f32) / f32(dim))
        factor, low, high = (f32(scaling.get(k, d)) for k, d in (("factor", 8.0), ("low_freq_factor", 1.0),
                                                                  ("high_freq_factor", 4.0)))
        old_context = f32(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_context / low, old_context / high
        out = []
        for freq in freqs:
            wavelen = f32(2 * np.pi) / freq
            if wavelen < high_wavelen:
                out.append(f32(1.0))
            elif wavelen > low_wavelen:
                out.append(factor)
            else:
                smooth = (old_context / wavelen - low) / (high - low)
                out.append(f32(1.0) / ((f32(1.0) - smooth) / factor + smooth))
        return {"rope_freqs.weight": np.array(out, dtype=f32)}

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.decoder import DecoderLayer, build_decoder

        hp = self.hp

        def layer(w: Any, i: int) -> DecoderLayer:
            p = f"model.layers.{i}."
            qkv = [p + f"self_attn.{n}_proj" for n in "qkv"]
            mlp = [p + "mlp.gate_proj", p + "mlp.up_proj"]
            return DecoderLayer(
                attn_norm=w.norm(p + "input_layernorm"),
                qkv=w.fused([n + ".weight" for n in qkv]),
                qkv_bias=w.fused([n + ".bias" for n in qkv]) if hp.attention_bias else None,
                o=w.get(p + "self_attn.o_proj.weight"), o_bias=w.get_optional(p + "self_attn.o_proj.bias"),
                mlp_norm=w.norm(p + "post_attention_layernorm"),
                up=w.fused([n + ".weight" for n in mlp]),
                up_bias=w.fused([n + ".bias" for n in mlp]) if hp.mlp_bias else None,
                down=w.get(p + "mlp.down_proj.weight"), down_bias=w.get_optional(p + "mlp.down_proj.bias"),
            )

        return build_decoder(self, source, device, dtype, layer, "model.embed_tokens.weight", "model.norm")


@register
class Qwen2(Llama):
    hf_names = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)
    gguf_arch = "QWEN2"
    family = "Qwen2"
    qkv_bias_always = True  # q/k/v carry biases, o_proj does not
