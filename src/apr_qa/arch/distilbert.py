"""DistilBERT encoders (DistilBertModel, DistilBertForMaskedLM, sentence-transformers exports such as
msmarco-distilbert): BERT's post-LayerNorm layers without token types, LayerNorm eps fixed at 1e-12.

`sinusoidal_pos_embds` needs nothing special: transformers keeps the sinusoidal table as the
ordinary `position_embeddings.weight` parameter, so checkpoints store it and it loads as stored.
llama.cpp's converter writes DistilBERT as its BERT architecture; a GGUF of one therefore reads as
BERT (gguf_arch stays None here so the "bert" GGUF architecture keeps meaning the Bert family)."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UnsupportedError
from . import register
from .base import Architecture, Hyperparams, require

LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT, not a config key


@register
class DistilBert(Architecture):
    hf_names = ("DistilBertModel", "DistilBertForMaskedLM")
    model_types = ("distilbert",)
    kind = "encoder"
    family = "DistilBERT"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        from ..runtime.activations import ACTIVATIONS

        # config.json spells them dim/n_heads/n_layers/hidden_dim; transformers maps the BERT names onto them
        hidden, heads = require(config, "dim", "hidden_size"), require(config, "n_heads", "num_attention_heads")
        if hidden % heads:
            raise UnsupportedError(f"dim {hidden} is not a multiple of n_heads {heads}")
        activation = config.get("activation", "gelu")
        if activation not in ACTIVATIONS:
            raise UnsupportedError(f"activation {activation!r} is not supported")
        return Hyperparams(
            kind="encoder", hidden_size=hidden, num_layers=require(config, "n_layers", "num_hidden_layers"),
            num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
            intermediate_size=require(config, "hidden_dim", "intermediate_size"),
            vocab_size=require(config, "vocab_size"), max_positions=int(config.get("max_position_embeddings", 512)),
            norm="layer", norm_eps=LAYER_NORM_EPS, activation=activation, gated_mlp=False, positions="learned",
            attention_bias=True, mlp_bias=True, tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    @property
    def prefix(self) -> str:
        """Task models nest the encoder under "distilbert."; DistilBertModel exports do not."""
        name = (self.config.get("architectures") or ["DistilBertModel"])[0]
        return "" if name == "DistilBertModel" else "distilbert."

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp, p0 = self.hp, self.prefix
        hidden, inter = hp.hidden_size, hp.intermediate_size
        out: dict[str, tuple[int, ...]] = {
            p0 + "embeddings.word_embeddings.weight": (hp.vocab_size, hidden),
            p0 + "embeddings.position_embeddings.weight": (hp.max_positions, hidden),
            p0 + "embeddings.LayerNorm.weight": (hidden,), p0 + "embeddings.LayerNorm.bias": (hidden,),
        }
        for i in range(hp.num_layers):
            p = f"{p0}transformer.layer.{i}."
            for name, shape in (("attention.q_lin", (hidden, hidden)), ("attention.k_lin", (hidden, hidden)),
                                ("attention.v_lin", (hidden, hidden)), ("attention.out_lin", (hidden, hidden)),
                                ("ffn.lin1", (inter, hidden)), ("ffn.lin2", (hidden, inter))):
                out[p + name + ".weight"], out[p + name + ".bias"] = shape, shape[:1]
            for name in ("sa_layer_norm", "output_layer_norm"):
                out[p + name + ".weight"], out[p + name + ".bias"] = (hidden,), (hidden,)
        return out

    def optional(self, name: str) -> bool:
        # the masked-LM head (vocab_*) and task heads: not part of the embedding path
        return bool(re.match(r"^(vocab_(transform|layer_norm|projector)|pre_classifier|classifier|qa_outputs)\.",
                             name))

    def dropped(self, name: str) -> bool:
        return name.endswith("embeddings.position_ids")  # buffer some older exports persisted

    def keep_unquantized(self, name: str) -> bool:
        # llama-quant.cpp's BERT rule (position_embd and norms stay float)
        return name.endswith("position_embeddings.weight") or "layer_norm" in name or "LayerNorm" in name

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.encoder import EncoderLayer, build_encoder

        def layers(w: Any) -> list:
            out = []
            for i in range(self.hp.num_layers):
                p = f"{self.prefix}transformer.layer.{i}."
                qkv = [p + f"attention.{n}_lin" for n in ("q", "k", "v")]
                out.append(EncoderLayer(
                    qkv=w.fused([n + ".weight" for n in qkv]), qkv_bias=w.fused([n + ".bias" for n in qkv]),
                    out=w.get(p + "attention.out_lin.weight"), out_bias=w.dense(p + "attention.out_lin.bias"),
                    attn_norm=w.norm(p + "sa_layer_norm"),
                    inter=w.get(p + "ffn.lin1.weight"), inter_bias=w.dense(p + "ffn.lin1.bias"),
                    down=w.get(p + "ffn.lin2.weight"), down_bias=w.dense(p + "ffn.lin2.bias"),
                    out_norm=w.norm(p + "output_layer_norm"),
                ))
            return out

        return build_encoder(self, source, device, dtype, layers, token_type=False)
