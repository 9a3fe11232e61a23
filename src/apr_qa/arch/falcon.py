"""Falcon (FalconForCausalLM; the legacy RWForCausalLM "RefinedWeb" checkpoints): LayerNorm, GELU MLP
(dense_h_to_4h / dense_4h_to_h), one fused query_key_value projection, rotary or ALiBi positions.

The forms transformers' modeling_falcon.py implements, all served here:
- 7B style: multi_query (one KV head), parallel_attn with one input_layernorm feeding attention and MLP;
  QKV rows [q heads..., k, v].
- new_decoder_architecture (40B/180B, Falcon2): num_kv_heads groups, each [its q heads..., k, v];
  parallel, with ln_attn + ln_mlp (num_ln_in_parallel_attn 2, the default) or one input_layernorm (1).
- multi_query=False: every head [q, k, v]; parallel_attn=False: sequential, post_attention_layernorm.
- alibi (falcon-rw): ALiBi instead of rotary, slopes rounded to bfloat16 as build_alibi_tensor does.
All three QKV layouts are "kv groups of (heads/kv q rows, k, v)" with kv = 1, num_kv_heads or heads; the
runtime wants rows [q; k; v], so `build` reorders them with one index and the .apr keeps the HF tensor.

GGUF (llama.cpp FALCON): convert_hf_to_gguf.py's FalconModel.modify_tensors regroups query_key_value
into [q; k; v] with n_head_kv from config (num_kv_heads / n_head_kv, else 1). llama.cpp's FALCON graph
is always parallel, rotary (NEOX, i.e. HF's rotate-half: no Q/K permutation) and bias-free, and its
converter writes feed_forward_length = 4 * hidden and no rope base: ALiBi, sequential (no GGUF name for
post_attention_layernorm) and biased models have no faithful GGUF and are read from HF checkpoints only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UnsupportedError
from . import register
from .base import (Architecture, Hyperparams, gguf_hparams, gguf_special_tokens, require, rope_config,
                   write_gguf_basics, write_gguf_rope_scaling)


def grouped_qkv_order(kv_groups: int, group: int, head_dim: int) -> np.ndarray:
    """Row order taking Falcon's fused QKV, laid out as kv_groups x (group q heads, k, v) x head_dim, to
    [all q; all k; all v] (rows[order] is the regrouped matrix; llama.cpp's FalconModel regroup)."""
    rows = np.arange(kv_groups * (group + 2) * head_dim).reshape(kv_groups, group + 2, head_dim)
    return np.concatenate([rows[:, :group].reshape(-1), rows[:, group].reshape(-1), rows[:, group + 1].reshape(-1)])


@register
class Falcon(Architecture):
    hf_names = ("FalconForCausalLM", "RWForCausalLM")
    model_types = ("falcon", "RefinedWeb", "RefinedWebModel")
    gguf_arch = "FALCON"
    family = "Falcon"

    # --- config -------------------------------------------------------------------------------
    @staticmethod
    def _layout(config: dict[str, Any]) -> tuple[bool, bool, int]:
        """(new_decoder_architecture, parallel_attn, layer norms before a parallel block)."""
        # the original RW code shipped the 40B ("RefinedWeb") decoder as its own model type
        new_arch = bool(config.get("new_decoder_architecture", config.get("model_type") == "RefinedWeb"))
        parallel = bool(config.get("parallel_attn", True))
        num_ln = config.get("num_ln_in_parallel_attn") or (2 if new_arch else 1)
        if new_arch and not parallel:
            raise UnsupportedError("new_decoder_architecture without parallel_attn (transformers cannot run it)")
        if parallel and num_ln == 2 and not new_arch:
            raise UnsupportedError("num_ln_in_parallel_attn 2 needs new_decoder_architecture (transformers "
                                   "cannot run it)")
        if num_ln not in (1, 2):
            raise UnsupportedError(f"num_ln_in_parallel_attn {num_ln} is not supported")
        return new_arch, parallel, num_ln

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        hidden = require(config, "hidden_size", "n_embed")
        heads = require(config, "num_attention_heads", "n_head")
        new_arch, parallel, _ = cls._layout(config)
        if new_arch:
            kv_heads = config.get("num_kv_heads") or config.get("n_head_kv") or heads
        elif config.get("multi_query", True):
            kv_heads = 1
        else:
            kv_heads = heads  # every head its own q, k, v
        alibi = bool(config.get("alibi", False))
        head_dim = hidden // heads
        theta, scaling = rope_config(config)
        bias = bool(config.get("bias", False))
        return Hyperparams(
            kind="decoder", hidden_size=hidden, num_layers=require(config, "num_hidden_layers", "n_layer"),
            num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            intermediate_size=config.get("ffn_hidden_size") or 4 * hidden, vocab_size=require(config, "vocab_size"),
            max_positions=int(config.get("max_position_embeddings") or 2048),
            norm="layer", norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
            activation=config.get("activation", "gelu"), gated_mlp=False,
            positions="alibi" if alibi else "rope", rotary_dims=0 if alibi else head_dim,
            rope_theta=theta, rope_scaling=scaling, parallel_residual=new_arch or parallel,
            attention_bias=bias, mlp_bias=bias, tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    # --- tensors ------------------------------------------------------------------------------
    def _norm_names(self) -> tuple[str, str | None]:
        """(norm before attention, norm before the MLP or None when the MLP reads the same one)."""
        new_arch, parallel, num_ln = self._layout(self.config)
        if not parallel:
            return "input_layernorm", "post_attention_layernorm"
        if new_arch and num_ln == 2:
            return "ln_attn", "ln_mlp"
        return "input_layernorm", None

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        hidden, ffn, bias = hp.hidden_size, hp.intermediate_size, hp.attention_bias
        qkv_rows = (hp.num_heads + 2 * hp.num_kv_heads) * hp.head_dim
        out: dict[str, tuple[int, ...]] = {"transformer.word_embeddings.weight": (hp.vocab_size, hidden)}
        for i in range(hp.num_layers):
            p = f"transformer.h.{i}."
            for norm in self._norm_names():
                if norm is not None:
                    out[p + norm + ".weight"], out[p + norm + ".bias"] = (hidden,), (hidden,)
            for name, shape in (("self_attention.query_key_value", (qkv_rows, hidden)),
                                ("self_attention.dense", (hidden, hidden)),
                                ("mlp.dense_h_to_4h", (ffn, hidden)), ("mlp.dense_4h_to_h", (hidden, ffn))):
                out[p + name + ".weight"] = shape
                if bias:
                    out[p + name + ".bias"] = shape[:1]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (hidden,), (hidden,)
        if not hp.tied_embeddings:
            out["lm_head.weight"] = (hp.vocab_size, hidden)
        return out

    def optional(self, name: str) -> bool:
        return name == "lm_head.weight"  # tied checkpoints (falcon-7b) often store the head anyway

    def qkv_order(self) -> np.ndarray:
        """Rows of the HF query_key_value in the runtime's [q; k; v] order (see the module docstring)."""
        hp = self.hp
        return grouped_qkv_order(hp.num_kv_heads, hp.num_heads // hp.num_kv_heads, hp.head_dim)

    # --- GGUF ---------------------------------------------------------------------------------
    def gguf_row_order(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if ".self_attention.query_key_value." not in name:
            return None
        # the converter stored hf[order]; canonical row r is GGUF row inverse[r]
        return np.argsort(self.qkv_order(), kind="stable")

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        get, need = gguf_hparams(meta, "falcon")
        heads, kv = need("attention.head_count"), get("attention.head_count_kv", 1)
        two_norms = "blk.0.attn_norm_2.weight" in tensor_names  # 40B's ln_attn (ln_mlp is attn_norm)
        cfg: dict[str, Any] = {
            "architectures": ["FalconForCausalLM"], "model_type": "falcon", "activation": "gelu",
            "hidden_size": need("embedding_length"), "ffn_hidden_size": need("feed_forward_length"),
            "num_hidden_layers": need("block_count"), "num_attention_heads": heads,
            "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5),
            "max_position_embeddings": get("context_length", 2048), "rope_theta": get("rope.freq_base", 10000.0),
            "alibi": False, "parallel_attn": True, "bias": "blk.0.attn_qkv.bias" in tensor_names,
            "tie_word_embeddings": "output.weight" not in tensor_names,
            "vocab_size": get("vocab_size") or len(meta.get("tokenizer.ggml.tokens") or []),
        }
        if kv == 1 and not two_norms:  # 7B: multi-query, one shared norm
            cfg.update(new_decoder_architecture=False, multi_query=True)
        else:  # kv groups (kv == heads is also multi_query=False's per-head layout); 1 or 2 norms
            cfg.update(new_decoder_architecture=True, num_kv_heads=kv, num_ln_in_parallel_attn=2 if two_norms else 1)
        return {**cfg, **gguf_special_tokens(meta)}

    def write_gguf_metadata(self, writer: Any) -> list[str]:
        """FalconModel.set_gguf_parameters (counts, the "jploski" QKV layout, LayerNorm epsilon), with the
        true context length and feed-forward size where the converter writes 2048 and 4 * hidden, and the
        rotary base it leaves out. Only the forms llama.cpp's FALCON graph computes are exported."""
        hp = self.hp
        refused = [why for bad, why in ((hp.positions == "alibi", "ALiBi positions"),
                                        (not hp.parallel_residual, "the sequential block"),
                                        (hp.attention_bias, "biases")) if bad]
        if refused:
            raise UnsupportedError(f"Falcon with {' and '.join(refused)} cannot be exported: llama.cpp's FALCON "
                                   "graph is parallel, rotary and bias-free", self.path)
        write_gguf_basics(writer, hp)
        write_gguf_rope_scaling(writer, hp, self.family)
        writer.add_tensor_data_layout("jploski")
        return []

    # --- runtime ------------------------------------------------------------------------------
    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        import torch

        from ..runtime.decoder import DecoderLayer, alibi_slopes, build_decoder

        hp = self.hp
        order = torch.from_numpy(self.qkv_order()).to(device)
        attn_norm, mlp_norm = self._norm_names()

        def layer(w: Any, i: int) -> DecoderLayer:
            p = f"transformer.h.{i}."
            qkv = p + "self_attention.query_key_value"
            return DecoderLayer(
                attn_norm=w.norm(p + attn_norm),
                qkv=w.get(qkv + ".weight")[order].contiguous(),
                qkv_bias=w.dense(qkv + ".bias")[order].contiguous() if hp.attention_bias else None,
                o=w.get(p + "self_attention.dense.weight"), o_bias=w.get_optional(p + "self_attention.dense.bias"),
                mlp_norm=w.norm(p + mlp_norm) if mlp_norm else None,
                up=w.get(p + "mlp.dense_h_to_4h.weight"), up_bias=w.get_optional(p + "mlp.dense_h_to_4h.bias"),
                down=w.get(p + "mlp.dense_4h_to_h.weight"), down_bias=w.get_optional(p + "mlp.dense_4h_to_h.bias"),
            )

        # build_alibi_tensor multiplies bfloat16 slopes by the integer positions: a bfloat16 product
        slopes = alibi_slopes(hp.num_heads).to(device=device, dtype=torch.bfloat16) if hp.positions == "alibi" else None
        return build_decoder(self, source, device, dtype, layer, "transformer.word_embeddings.weight",
                             "transformer.ln_f", alibi_slopes=lambda w: slopes)
