"""GPT-2 (GPT2LMHeadModel, and GPT2Model checkpoints such as the original openai-community/gpt2
files): learned absolute positions, pre-LayerNorm blocks, plain GELU MLP, biases everywhere, one
fused QKV projection, head tied to the token embedding.

Two checkpoint quirks are made canonical on the way in:
- the linear layers are `Conv1D`s, stored [in, out]; they are transposed to nn.Linear's [out, in]
  (convert_hf_to_gguf.py transposes the same four, so GGUF files are canonical already);
- GPT2Model checkpoints (the hub's gpt2 files) name tensors without the "transformer." prefix and
  carry the causal-mask buffers `attn.bias` / `attn.masked_bias`, which are not weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import UnsupportedError
from . import register
from .base import (Architecture, Hyperparams, gguf_hparams, gguf_special_tokens, require,
                   write_gguf_basics)

# activations llama.cpp's GPT-2 / StarCoder graphs compute (ggml_gelu is the tanh approximation)
GGML_GELU = ("gelu_new", "gelu_pytorch_tanh")

# Conv1D weights ([in, out] in checkpoints), by canonical name suffix.
CONV1D_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _reject(config: dict[str, Any], family: str, **unsupported: Any) -> None:
    """One-line refusal of config switches whose numerics the generic decoder does not reproduce."""
    for key, bad in unsupported.items():
        if key in config and config[key] == bad:
            raise UnsupportedError(f"{family} with {key}={config[key]!r} is not supported")


@register
class GPT2(Architecture):
    hf_names: ClassVar[tuple[str, ...]] = ("GPT2LMHeadModel", "GPT2Model")
    model_types: ClassVar[tuple[str, ...]] = ("gpt2",)
    gguf_arch = "GPT2"
    family = "GPT-2"
    default_activation = "gelu_new"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        # scale_attn_by_inverse_layer_idx divides each layer's scores by its index; reorder_and_upcast_attn
        # is a mixed-precision variant of the same product; no scaling at all is a third option.
        _reject(config, cls.family, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                scale_attn_weights=False, add_cross_attention=True)
        hidden = require(config, "n_embd", "hidden_size")
        heads = require(config, "n_head", "num_attention_heads")
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} does not split into {heads} heads")
        kv_heads = cls.kv_heads(config, heads)
        return Hyperparams(
            kind="decoder", hidden_size=hidden, num_layers=require(config, "n_layer", "num_hidden_layers"),
            num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
            intermediate_size=config.get("n_inner") or 4 * hidden, vocab_size=require(config, "vocab_size"),
            max_positions=int(require(config, "n_positions", "max_position_embeddings", "n_ctx")),
            norm="layer", norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
            activation=config.get("activation_function") or cls.default_activation, gated_mlp=False,
            positions="learned", attention_bias=True, mlp_bias=True,
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    @classmethod
    def kv_heads(cls, config: dict[str, Any], heads: int) -> int:
        return heads

    # --- tensors ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        hidden, inter = hp.hidden_size, hp.intermediate_size
        qkv_rows = (hp.num_heads + 2 * hp.num_kv_heads) * hp.head_dim
        out: dict[str, tuple[int, ...]] = {
            "transformer.wte.weight": (hp.vocab_size, hidden),
            "transformer.wpe.weight": (hp.max_positions, hidden),
        }
        for i in range(hp.num_layers):
            p = f"transformer.h.{i}."
            for name in ("ln_1", "ln_2"):
                out[p + name + ".weight"] = out[p + name + ".bias"] = (hidden,)
            for name, shape in (("attn.c_attn", (qkv_rows, hidden)), ("attn.c_proj", (hidden, hidden)),
                                ("mlp.c_fc", (inter, hidden)), ("mlp.c_proj", (hidden, inter))):
                out[p + name + ".weight"], out[p + name + ".bias"] = shape, shape[:1]
        out["transformer.ln_f.weight"] = out["transformer.ln_f.bias"] = (hidden,)
        if not hp.tied_embeddings:
            out["lm_head.weight"] = (hp.vocab_size, hidden)
        return out

    def optional(self, name: str) -> bool:
        return name == "lm_head.weight"  # tied checkpoints sometimes store the head anyway

    def dropped(self, name: str) -> bool:
        # the causal-mask buffers older checkpoints saved (GPT-2 per layer, GPTBigCode once)
        return name.endswith((".attn.bias", ".attn.masked_bias")) or name in ("bias", "transformer.bias")

    def rename(self, name: str) -> str:
        # GPT2Model checkpoints (the hub's original gpt2 files) lack the "transformer." prefix
        return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name

    def is_conv1d(self, name: str) -> bool:
        return name.endswith(CONV1D_WEIGHTS)

    def to_canonical(self, name: str, array: np.ndarray) -> np.ndarray:
        return array.T if self.is_conv1d(name) and array.ndim == 2 else array

    def canonical_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape)) if self.is_conv1d(name) and len(shape) == 2 else shape

    # --- GGUF ---------------------------------------------------------------------------------
    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        arch = "starcoder" if cls.gguf_arch == "STARCODER" else "gpt2"
        get, need = gguf_hparams(meta, arch)
        ctx = need("context_length")
        cfg: dict[str, Any] = {
            "architectures": [cls.hf_names[0]], "model_type": cls.model_types[0],
            "activation_function": cls.default_activation,  # GGML's GELU is the tanh approximation
            "n_embd": need("embedding_length"), "n_layer": need("block_count"), "n_head": need("attention.head_count"),
            "n_inner": need("feed_forward_length"), "n_positions": ctx,
            "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5),
            "vocab_size": get("vocab_size") or len(meta.get("tokenizer.ggml.tokens") or []),
            # llama.cpp's older converters stored the tied head again as output.weight: read it as a head
            "tie_word_embeddings": "output.weight" not in tensor_names,
        }
        return {**cfg, **cls.gguf_extra_config(get), **gguf_special_tokens(meta)}

    @classmethod
    def gguf_extra_config(cls, get: Any) -> dict[str, Any]:
        return {"n_ctx": get("context_length")}

    def write_gguf_metadata(self, writer: Any) -> list[str]:
        """GPT2Model / StarCoderModel.set_gguf_parameters: block, context, embedding, feed-forward and
        head counts, the LayerNorm epsilon; StarCoder also head_count_kv (llama.cpp runs its multi-query
        form only). No rotary keys: positions are the learned position_embd tensor."""
        hp = self.hp
        if self.gguf_arch == "STARCODER" and hp.num_kv_heads != 1:
            raise UnsupportedError("StarCoder with multi_query=False cannot be exported: llama.cpp's STARCODER "
                                   "graph runs multi-query models only", self.path)
        write_gguf_basics(writer, hp, kv_heads=self.gguf_arch == "STARCODER")
        if hp.activation not in GGML_GELU:
            return [(f"activation {hp.activation!r}: llama.cpp's {self.gguf_name_of_arch()} graph computes the "
                     "tanh GELU approximation")]
        return []

    # --- runtime ------------------------------------------------------------------------------
    def qkv_rows(self, fused: Any) -> Any:
        """c_attn rows as the decoder wants them: [q; k; v] (GPT-2 stores them so)."""
        return fused

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.activations import ACTIVATIONS
        from ..runtime.decoder import DecoderLayer, build_decoder

        if self.hp.activation not in ACTIVATIONS:
            raise UnsupportedError(f"activation_function {self.hp.activation!r} is not supported", source.path)

        def layer(w: Any, i: int) -> DecoderLayer:
            p = f"transformer.h.{i}."
            return DecoderLayer(
                attn_norm=w.norm(p + "ln_1"),
                qkv=self.qkv_rows(w.get(p + "attn.c_attn.weight")).contiguous(),
                qkv_bias=self.qkv_rows(w.dense(p + "attn.c_attn.bias")).contiguous(),
                o=w.get(p + "attn.c_proj.weight"), o_bias=w.dense(p + "attn.c_proj.bias"),
                mlp_norm=w.norm(p + "ln_2"),
                up=w.get(p + "mlp.c_fc.weight"), up_bias=w.dense(p + "mlp.c_fc.bias"),
                down=w.get(p + "mlp.c_proj.weight"), down_bias=w.dense(p + "mlp.c_proj.bias"),
            )

        return build_decoder(self, source, device, dtype, layer, "transformer.wte.weight", "transformer.ln_f",
                             positions=lambda w: w.dense("transformer.wpe.weight"))
