"""MobileBERT encoders (MobileBertModel, MobileBertForMaskedLM, MobileBertForPreTraining as
google/mobilebert-uncased declares itself): a narrow "true hidden size" inside each layer reached
through bottleneck projections, a stack of feed-forward blocks per layer, NoNorm, and a trigram
(kernel-3) input embedding. Runtime: runtime/mobilebert.py. llama.cpp has no MobileBERT
architecture."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UnsupportedError
from . import register
from .base import MAX_LAYERS, Architecture, Hyperparams, require

NORMS = {"no_norm": "none", "layer_norm": "layer"}


@register
class MobileBert(Architecture):
    hf_names = ("MobileBertModel", "MobileBertForMaskedLM", "MobileBertForPreTraining")
    model_types = ("mobilebert",)
    kind = "encoder"
    family = "MobileBERT"

    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        from ..runtime.activations import ACTIVATIONS

        norm = config.get("normalization_type", "no_norm")
        if norm not in NORMS:
            raise UnsupportedError(f"normalization_type {norm!r} is not supported ({', '.join(NORMS)})")
        activation = config.get("hidden_act", "relu")
        if activation not in ACTIVATIONS:
            raise UnsupportedError(f"hidden_act {activation!r} is not supported")
        hidden, heads = require(config, "hidden_size"), require(config, "num_attention_heads")
        use_bottleneck = bool(config.get("use_bottleneck", True))
        true_hidden = int(config.get("intra_bottleneck_size", 128)) if use_bottleneck else hidden
        if true_hidden % heads:
            raise UnsupportedError(f"intra_bottleneck_size {true_hidden} is not a multiple of num_attention_heads "
                                   f"{heads}" if use_bottleneck else
                                   f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        if (use_bottleneck and not config.get("use_bottleneck_attention", False)
                and not config.get("key_query_shared_bottleneck", True) and true_hidden != hidden):
            # queries and keys would come from the hidden states into layers sized for the bottleneck
            raise UnsupportedError("key_query_shared_bottleneck false with use_bottleneck_attention false needs "
                                   "intra_bottleneck_size == hidden_size")
        if int(config.get("num_feedforward_networks", 4)) < 1:
            raise UnsupportedError(f"num_feedforward_networks {config['num_feedforward_networks']} is not positive")
        return Hyperparams(
            kind="encoder", hidden_size=hidden, num_layers=require(config, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=heads, head_dim=true_hidden // heads, intermediate_size=require(config, "intermediate_size"),
            vocab_size=require(config, "vocab_size"), max_positions=int(config.get("max_position_embeddings", 512)),
            norm=NORMS[norm], norm_eps=float(config.get("layer_norm_eps", 1e-12)), activation=activation,
            gated_mlp=False, positions="learned", attention_bias=True, mlp_bias=True,
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    # --- the config keys transformers reads, with its defaults ---------------------------------
    @property
    def use_bottleneck(self) -> bool:
        return bool(self.config.get("use_bottleneck", True))

    @property
    def bottleneck_attention(self) -> bool:
        return self.use_bottleneck and bool(self.config.get("use_bottleneck_attention", False))

    @property
    def shared_bottleneck(self) -> bool:
        """key_query_shared_bottleneck stores its layer whenever use_bottleneck; it is used only
        without use_bottleneck_attention."""
        return self.use_bottleneck and bool(self.config.get("key_query_shared_bottleneck", True))

    @property
    def true_hidden(self) -> int:
        return self.hp.num_heads * self.hp.head_dim

    @property
    def embedding_size(self) -> int:
        return int(self.config.get("embedding_size", 128))

    @property
    def trigram(self) -> bool:
        return bool(self.config.get("trigram_input", True))

    @property
    def transformation_used(self) -> bool:
        return self.trigram or self.embedding_size != self.hp.hidden_size

    @property
    def ffn_count(self) -> int:
        count = int(self.config.get("num_feedforward_networks", 4))
        if count * self.hp.num_layers > MAX_LAYERS:  # the tensor table holds count blocks per layer
            raise UnsupportedError(f"num_feedforward_networks {count} x {self.hp.num_layers} layers are over the "
                                   f"limit of {MAX_LAYERS}", self.path)
        return count

    @property
    def prefix(self) -> str:
        """Task models nest the encoder under "mobilebert."; MobileBertModel exports do not."""
        name = (self.config.get("architectures") or ["MobileBertModel"])[0]
        return "" if name == "MobileBertModel" else "mobilebert."

    def tensors(self) -> dict[str, tuple[int, ...]]:
        hp, p0, emb = self.hp, self.prefix, self.embedding_size
        hidden, inter, true = hp.hidden_size, hp.intermediate_size, self.true_hidden
        out: dict[str, tuple[int, ...]] = {
            p0 + "embeddings.word_embeddings.weight": (hp.vocab_size, emb),
            p0 + "embeddings.position_embeddings.weight": (hp.max_positions, hidden),
            p0 + "embeddings.token_type_embeddings.weight": (int(self.config.get("type_vocab_size", 2)), hidden),
            p0 + "embeddings.LayerNorm.weight": (hidden,), p0 + "embeddings.LayerNorm.bias": (hidden,),
        }
        if self.transformation_used:
            out[p0 + "embeddings.embedding_transformation.weight"] = (hidden, emb * (3 if self.trigram else 1))
            out[p0 + "embeddings.embedding_transformation.bias"] = (hidden,)

        def linear(name: str, rows: int, cols: int) -> None:
            out[name + ".weight"], out[name + ".bias"] = (rows, cols), (rows,)

        def norm(name: str, size: int) -> None:
            out[name + ".weight"], out[name + ".bias"] = (size,), (size,)

        for i in range(hp.num_layers):
            p = f"{p0}encoder.layer.{i}."
            linear(p + "attention.self.query", true, true)
            linear(p + "attention.self.key", true, true)
            linear(p + "attention.self.value", true, true if self.bottleneck_attention else hidden)
            linear(p + "attention.output.dense", true, true)
            norm(p + "attention.output.LayerNorm", true)
            for j in range(self.ffn_count - 1):
                linear(p + f"ffn.{j}.intermediate.dense", inter, true)
                linear(p + f"ffn.{j}.output.dense", true, inter)
                norm(p + f"ffn.{j}.output.LayerNorm", true)
            linear(p + "intermediate.dense", inter, true)
            linear(p + "output.dense", true, inter)
            norm(p + "output.LayerNorm", true)
            if self.use_bottleneck:
                linear(p + "bottleneck.input.dense", true, hidden)
                norm(p + "bottleneck.input.LayerNorm", true)
                if self.shared_bottleneck and not self.bottleneck_attention:
                    linear(p + "bottleneck.attention.dense", true, hidden)
                    norm(p + "bottleneck.attention.LayerNorm", true)
                linear(p + "output.bottleneck.dense", hidden, true)
                norm(p + "output.bottleneck.LayerNorm", hidden)
        return out

    def optional(self, name: str) -> bool:
        # pooler, MLM / pre-training heads, task heads; and parameters transformers creates but
        # never uses: the shared key/query bottleneck under use_bottleneck_attention, the embedding
        # transformation when neither trigram input nor a size change needs it
        name = name.removeprefix(self.prefix)
        return bool(re.match(r"^pooler\.|^(cls|classifier|qa_outputs)\.", name)
                    or (self.bottleneck_attention and re.match(r"^encoder\.layer\.\d+\.bottleneck\.attention\.", name))
                    or (not self.transformation_used and name.startswith("embeddings.embedding_transformation.")))

    def dropped(self, name: str) -> bool:
        return name.endswith("embeddings.position_ids")  # buffer some older exports persisted

    def keep_unquantized(self, name: str) -> bool:
        # llama-quant.cpp's BERT rule: position and token-type tables and norms stay float
        return name.endswith(("position_embeddings.weight", "token_type_embeddings.weight")) or "LayerNorm" in name

    def build(self, source: Any, device: Any, dtype: Any) -> Any:
        from ..runtime.encoder import pooling_mode
        from ..runtime.mobilebert import Bottleneck, FeedForward, MobileBertLayer, MobileBertModel, MobileBertWeights
        from ..runtime.tokenizer import Tokenizer
        from ..runtime.weights import WeightLoader

        w = WeightLoader(source, device, dtype, self.tensors())
        p0 = self.prefix

        def linear(name: str) -> tuple[Any, Any]:
            return w.get(name + ".weight"), w.dense(name + ".bias")

        def bottleneck(name: str) -> Bottleneck:
            return Bottleneck(linear(name + ".dense"), w.norm(name + ".LayerNorm"))

        layers = []
        for i in range(self.hp.num_layers):
            p = f"{p0}encoder.layer.{i}."
            layers.append(MobileBertLayer(
                query=linear(p + "attention.self.query"), key=linear(p + "attention.self.key"),
                value=linear(p + "attention.self.value"), attn_out=linear(p + "attention.output.dense"),
                attn_norm=w.norm(p + "attention.output.LayerNorm"),
                ffns=[FeedForward(linear(p + f"ffn.{j}.intermediate.dense"), linear(p + f"ffn.{j}.output.dense"),
                                  w.norm(p + f"ffn.{j}.output.LayerNorm")) for j in range(self.ffn_count - 1)],
                inter=linear(p + "intermediate.dense"), out=linear(p + "output.dense"),
                out_norm=w.norm(p + "output.LayerNorm"),
                input_bottleneck=bottleneck(p + "bottleneck.input") if self.use_bottleneck else None,
                attention_bottleneck=(bottleneck(p + "bottleneck.attention")
                                      if self.shared_bottleneck and not self.bottleneck_attention else None),
                output_bottleneck=bottleneck(p + "output.bottleneck") if self.use_bottleneck else None,
            ))
        e = p0 + "embeddings."
        weights = MobileBertWeights(
            word=w.get(e + "word_embeddings.weight"), position=w.dense(e + "position_embeddings.weight"),
            token_type=w.dense(e + "token_type_embeddings.weight"), embed_norm=w.norm(e + "LayerNorm"), layers=layers,
            transformation=linear(e + "embedding_transformation") if self.transformation_used else None,
            trigram=self.trigram, bottleneck_attention=self.bottleneck_attention)
        tokenizer = Tokenizer(source.tokenizer_json, source.tokenizer_config, self.config, source.path)
        return MobileBertModel(self.hp, weights, tokenizer, self.config, device, dtype,
                               pooling_mode(getattr(source, "pooling_config", None)))
