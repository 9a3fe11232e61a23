"""ALBERT encoders (AlbertModel, AlbertForMaskedLM): BERT's post-LayerNorm layers with factorized
embeddings (word/position/token-type tables of `embedding_size`, normalised, then projected to the
hidden size by `encoder.embedding_hidden_mapping_in`) and layer weights shared across depth:
`num_hidden_groups` groups of `inner_group_num` layers each, layer i running group
int(i / (num_hidden_layers / num_hidden_groups)) as transformers indexes it. llama.cpp has no
ALBERT architecture."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UnsupportedError
from . import register
from .base import Architecture, Hyperparams, MAX_LAYERS, require


@register
class Albert(Architecture):
    hf_names = ("AlbertModel", "AlbertForMaskedLM")
    model_types = ("albert",)
    kind = "encoder"
    family = "ALBERT"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        from ..runtime.activations import ACTIVATIONS

        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedError(f"position_embedding_type {config['position_embedding_type']!r} is not supported")
        hidden, heads = require(config, "hidden_size"), require(config, "num_attention_heads")
        if hidden % heads:
            # transformers would build query/key/value of heads * (hidden // heads) rows that no dense layer takes
            raise UnsupportedError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        activation = config.get("hidden_act", "gelu_new")
        if activation not in ACTIVATIONS:
            raise UnsupportedError(f"hidden_act {activation!r} is not supported")
        return Hyperparams(
            kind="encoder", hidden_size=hidden, num_layers=require(config, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=require(config, "intermediate_size"),
            vocab_size=require(config, "vocab_size"), max_positions=int(config.get("max_position_embeddings", 512)),
            norm="layer", norm_eps=float(config.get("layer_norm_eps", 1e-12)), activation=activation,
            gated_mlp=False, positions="learned", attention_bias=True, mlp_bias=True,
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    @property
    def embedding_size(self) -> int:
        return int(self.config.get("embedding_size", 128))

    @property
    def groups(self) -> int:
        groups = int(self.config.get("num_hidden_groups", 1))
        if groups < 1 or groups > self.hp.num_layers:
            raise UnsupportedError(f"num_hidden_groups {groups} is not between 1 and num_hidden_layers "
                                   f"{self.hp.num_layers}", self.path)
        return groups

    @property
    def inner(self) -> int:
        inner = int(self.config.get("inner_group_num", 1))
        if inner < 1:
            raise UnsupportedError(f"inner_group_num {inner} is not positive", self.path)
        if inner * self.groups > MAX_LAYERS:  # the tensor table holds groups x inner layers
            raise UnsupportedError(f"inner_group_num {inner} x num_hidden_groups {self.groups} layers are over "
                                   f"the limit of {MAX_LAYERS}", self.path)
        return inner

    def group_of_layer(self, i: int) -> int:
        """transformers' AlbertTransformer indexing (float division, then truncation)."""
        return int(i / (self.hp.num_layers / self.groups))

    @property
    def prefix(self) -> str:
        """Task models nest the encoder under "albert."; AlbertModel exports do not."""
        name = (self.config.get("architectures") or ["AlbertModel"])[0]
        return "" if name == "AlbertModel" else "albert."

    def _layer_prefix(self, group: int, inner: int) -> str:
        return f"{self.prefix}encoder.albert_layer_groups.{group}.albert_layers.{inner}."

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp, p0, emb = self.hp, self.prefix, self.embedding_size
        hidden, inter = hp.hidden_size, hp.intermediate_size
        out: dict[str, tuple[int, ...]] = {
            p0 + "embeddings.word_embeddings.weight": (hp.vocab_size, emb),
            p0 + "embeddings.position_embeddings.weight": (hp.max_positions, emb),
            p0 + "embeddings.token_type_embeddings.weight": (int(self.config.get("type_vocab_size", 2)), emb),
            p0 + "embeddings.LayerNorm.weight": (emb,), p0 + "embeddings.LayerNorm.bias": (emb,),
            p0 + "encoder.embedding_hidden_mapping_in.weight": (hidden, emb),
            p0 + "encoder.embedding_hidden_mapping_in.bias": (hidden,),
        }
        for g in range(self.groups):  # the unique (shared) layers, stored once each
            for j in range(self.inner):
                p = self._layer_prefix(g, j)
                for name, shape in (("attention.query", (hidden, hidden)), ("attention.key", (hidden, hidden)),
                                    ("attention.value", (hidden, hidden)), ("attention.dense", (hidden, hidden)),
                                    ("ffn", (inter, hidden)), ("ffn_output", (hidden, inter))):
                    out[p + name + ".weight"], out[p + name + ".bias"] = shape, shape[:1]
                for name in ("attention.LayerNorm", "full_layer_layer_norm"):
                    out[p + name + ".weight"], out[p + name + ".bias"] = (hidden,), (hidden,)
        return out

    def optional(self, name: str) -> bool:
        # pooler, masked-LM head (predictions.*), sentence-order head and task heads
        return bool(re.match(r"^(albert\.)?pooler\.|^(predictions|sop_classifier|classifier|qa_outputs)\.", name))

    def dropped(self, name: str) -> bool:
        return name.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))  # buffers

    def keep_unquantized(self, name: str) -> bool:
        # llama-quant.cpp's BERT rule: position and token-type tables and norms stay float
        return name.endswith(("position_embeddings.weight", "token_type_embeddings.weight")) or "LayerNorm" in name \
            or "layer_norm" in name

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.encoder import EncoderLayer, build_encoder

        def layers(w: Any) -> list:
            groups = []
            for g in range(self.groups):
                group = []
                for j in range(self.inner):
                    p = self._layer_prefix(g, j)
                    qkv = [p + f"attention.{n}" for n in ("query", "key", "value")]
                    group.append(EncoderLayer(
                        qkv=w.fused([n + ".weight" for n in qkv]), qkv_bias=w.fused([n + ".bias" for n in qkv]),
                        out=w.get(p + "attention.dense.weight"), out_bias=w.dense(p + "attention.dense.bias"),
                        attn_norm=w.norm(p + "attention.LayerNorm"),
                        inter=w.get(p + "ffn.weight"), inter_bias=w.dense(p + "ffn.bias"),
                        down=w.get(p + "ffn_output.weight"), down_bias=w.dense(p + "ffn_output.bias"),
                        out_norm=w.norm(p + "full_layer_layer_norm"),
                    ))
                groups.append(group)
            # each of the num_hidden_layers steps runs a whole group; shared weights are the same objects
            return [layer for i in range(self.hp.num_layers) for layer in groups[self.group_of_layer(i)]]

        mapping = self.prefix + "encoder.embedding_hidden_mapping_in"
        return build_encoder(self, source, device, dtype, layers, token_type=True,
                             projection=lambda w: (w.get(mapping + ".weight"), w.dense(mapping + ".bias")))
