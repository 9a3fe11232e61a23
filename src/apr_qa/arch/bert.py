"""BERT encoders (BertModel, BertForMaskedLM, sentence-transformers exports such as all-MiniLM):
learned absolute positions, token types, post-LayerNorm layers, GELU.

GGUF: llama.cpp's "bert" architecture. Its converter also writes DistilBERT as "bert", without a
token_types tensor; such a file reads as a BERT with `type_vocab_size` 0 (no token types)."""

from __future__ import annotations

import re
from typing import Any

from . import register
from .base import Architecture, Hyperparams, gguf_hparams, require, write_gguf_basics


@register
class Bert(Architecture):
    hf_names = ("BertModel", "BertForMaskedLM")
    model_types = ("bert",)
    gguf_arch = "BERT"
    kind = "encoder"
    family = "BERT"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        if config.get("position_embedding_type", "absolute") != "absolute":
            from ..errors import UnsupportedError

            raise UnsupportedError(f"position_embedding_type {config['position_embedding_type']!r} is not supported")
        hidden, heads = require(config, "hidden_size"), require(config, "num_attention_heads")
        return Hyperparams(
            kind="encoder", hidden_size=hidden, num_layers=require(config, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=require(config, "intermediate_size"),
            vocab_size=require(config, "vocab_size"), max_positions=int(config.get("max_position_embeddings", 512)),
            norm="layer", norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            activation=config.get("hidden_act", "gelu"), gated_mlp=False, positions="learned",
            attention_bias=True, mlp_bias=True,
        )

    @property
    def prefix(self) -> str:
        """BertForMaskedLM nests the encoder under "bert."; BertModel exports do not."""
        return "bert." if "ForMaskedLM" in (self.config.get("architectures") or [""])[0] else ""

    @property
    def type_vocab_size(self) -> int:
        """0: no token-type table (DistilBERT read from a llama.cpp GGUF)."""
        return int(self.config.get("type_vocab_size", 2))

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp, p0 = self.hp, self.prefix
        hidden, inter = hp.hidden_size, hp.intermediate_size
        out: dict[str, tuple[int, ...]] = {
            p0 + "embeddings.word_embeddings.weight": (hp.vocab_size, hidden),
            p0 + "embeddings.position_embeddings.weight": (hp.max_positions, hidden),
        }
        if self.type_vocab_size:
            out[p0 + "embeddings.token_type_embeddings.weight"] = (self.type_vocab_size, hidden)
        out[p0 + "embeddings.LayerNorm.weight"], out[p0 + "embeddings.LayerNorm.bias"] = (hidden,), (hidden,)
        for i in range(hp.num_layers):
            p = f"{p0}encoder.layer.{i}."
            for name in ("query", "key", "value"):
                out[p + f"attention.self.{name}.weight"] = (hidden, hidden)
                out[p + f"attention.self.{name}.bias"] = (hidden,)
            for name, shape in (("attention.output.dense", (hidden, hidden)), ("intermediate.dense", (inter, hidden)),
                                ("output.dense", (hidden, inter))):
                out[p + name + ".weight"], out[p + name + ".bias"] = shape, shape[:1]
            for name in ("attention.output.LayerNorm", "output.LayerNorm"):
                out[p + name + ".weight"], out[p + name + ".bias"] = (hidden,), (hidden,)
        return out

    def rename(self, name: str) -> str:
        # older checkpoints spell LayerNorm parameters gamma/beta
        return re.sub(r"(LayerNorm)\.gamma$", r"\1.weight", re.sub(r"(LayerNorm)\.beta$", r"\1.bias", name))

    def optional(self, name: str) -> bool:
        # the pooler (next-sentence head) and the masked-LM head: not part of the embedding path
        return bool(re.match(r"^(bert\.)?pooler\.|^cls\.", name))

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        """The keys convert_hf_to_gguf.py's TextModel/BertModel write; `token_type_count` is
        written even for DistilBERT (as 1), so the table's presence decides."""
        get, need = gguf_hparams(meta, "bert")
        return {
            "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "hidden_size": need("embedding_length"), "intermediate_size": need("feed_forward_length"),
            "num_hidden_layers": need("block_count"), "num_attention_heads": need("attention.head_count"),
            "layer_norm_eps": get("attention.layer_norm_epsilon", 1e-12),
            "max_position_embeddings": need("context_length"),
            "vocab_size": len(meta.get("tokenizer.ggml.tokens") or []) or get("vocab_size"),
            "type_vocab_size": int(meta.get("tokenizer.ggml.token_type_count", 2))
            if "token_types.weight" in tensor_names else 0,
            "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id", 0)),
        }

    def gguf_name(self, name: str) -> str | None:
        # BertModel.filter_tensors strips BertForMaskedLM's "bert." before mapping (so the quantization
        # exemptions find its position embeddings too); the pooler and the MLM head have no GGUF name
        # and are dropped on export, as there
        return super().gguf_name(name.removeprefix("bert."))

    def write_gguf_metadata(self, writer: Any) -> list[str]:
        """BertModel.set_gguf_parameters: TextModel's counts (no head_count_kv: BERT configs have none),
        causal_attention False; set_vocab's token_type_count. (The pooling type is written by the
        exporter from the sentence-transformers config the .apr keeps.)"""
        write_gguf_basics(writer, self.hp, kv_heads=False)
        writer.add_causal_attention(False)
        writer.add_token_type_count(self.type_vocab_size or 1)
        return []

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.encoder import EncoderLayer, build_encoder

        def layers(w: Any) -> list:
            out = []
            for i in range(self.hp.num_layers):
                p = f"{self.prefix}encoder.layer.{i}."
                qkv = [p + f"attention.self.{n}" for n in ("query", "key", "value")]
                out.append(EncoderLayer(
                    qkv=w.fused([n + ".weight" for n in qkv]), qkv_bias=w.fused([n + ".bias" for n in qkv]),
                    out=w.get(p + "attention.output.dense.weight"), out_bias=w.dense(p + "attention.output.dense.bias"),
                    attn_norm=w.norm(p + "attention.output.LayerNorm"),
                    inter=w.get(p + "intermediate.dense.weight"), inter_bias=w.dense(p + "intermediate.dense.bias"),
                    down=w.get(p + "output.dense.weight"), down_bias=w.dense(p + "output.dense.bias"),
                    out_norm=w.norm(p + "output.LayerNorm"),
                ))
            return out

        return build_encoder(self, source, device, dtype, layers, token_type=bool(self.type_vocab_size))
