"""MobileBERT's encoder: the same interface as `EncoderModel` (hidden states, pooled embeddings),
with MobileBERT's layer, which BERT's generic layer cannot express:

- embeddings: word vectors of `embedding_size`, optionally concatenated with their right and left
  neighbours ("trigram input", a kernel-3 convolution) and projected to the hidden size;
- bottlenecks: each layer works at `intra_bottleneck_size` (the "true hidden size"); linear maps
  bring the input down (for the attention's residual and, depending on the config, its queries,
  keys and values) and the output back up;
- a stack of `num_feedforward_networks` feed-forward blocks, the last one followed by the output
  bottleneck;
- NoNorm (x * w + b) or LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..arch.base import Hyperparams
from ..errors import AprQaError, UnsupportedError
from .encoder import EncoderModel
from .norms import Norm, apply_norm
from .kernels import prepare_linear
from .packed import embedding, linear
from .tokenizer import Tokenizer

Linear = tuple[Any, torch.Tensor]  # (weight [out, in]: a tensor or packed blocks, bias [out])

# transformers builds these two LayerNorms without passing config.layer_norm_eps (NoNorm ignores eps)
TORCH_LAYER_NORM_EPS = 1e-5


@dataclass
class Bottleneck:
    dense: Linear
    norm: Norm


@dataclass
class FeedForward:
    inter: Linear
    out: Linear
    norm: Norm


@dataclass
class MobileBertLayer:
    query: Linear
    key: Linear
    value: Linear
    attn_out: Linear
    attn_norm: Norm
    ffns: list[FeedForward]          # num_feedforward_networks - 1 stacked blocks
    inter: Linear                    # the last feed-forward block ...
    out: Linear
    out_norm: Norm                   # ... whose norm transformers makes with eps 1e-5
    input_bottleneck: Bottleneck | None = None      # use_bottleneck: hidden -> intra_bottleneck_size
    attention_bottleneck: Bottleneck | None = None  # key_query_shared_bottleneck: queries and keys
    output_bottleneck: Bottleneck | None = None     # use_bottleneck: back to hidden, residual from the input


@dataclass
class MobileBertWeights:
    word: Any
    position: torch.Tensor
    token_type: torch.Tensor
    embed_norm: Norm
    layers: list[MobileBertLayer]
    transformation: Linear | None = None  # trigram / embedding_size -> hidden; None when unused
    trigram: bool = True
    bottleneck_attention: bool = False    # queries, keys and values all from the input bottleneck


class MobileBertModel(EncoderModel):
    def __init__(self, hp: Hyperparams, weights: MobileBertWeights, tokenizer: Tokenizer, config: dict[str, Any],
                 device: torch.device, dtype: torch.dtype, pooling: str = "mean"):
        super().__init__(hp, weights, tokenizer, config, device, dtype, pooling)  # type: ignore[arg-type]
        # MobileBERT's weights have their own layout; every base method that reads self.w is overridden.
        self.w: MobileBertWeights = weights  # type: ignore[assignment]

    def _prepare_linears(self, device: torch.device) -> None:
        def prepared(lin: Linear) -> Linear:
            return prepare_linear(lin[0], device), lin[1]

        def bottleneck(b: Bottleneck | None) -> Bottleneck | None:
            return None if b is None else Bottleneck(prepared(b.dense), b.norm)

        w = self.w
        w.transformation = None if w.transformation is None else prepared(w.transformation)
        for layer in w.layers:
            layer.query, layer.key, layer.value = prepared(layer.query), prepared(layer.key), prepared(layer.value)
            layer.attn_out = prepared(layer.attn_out)
            layer.inter, layer.out = prepared(layer.inter), prepared(layer.out)
            layer.ffns = [FeedForward(prepared(f.inter), prepared(f.out), f.norm) for f in layer.ffns]
            layer.input_bottleneck = bottleneck(layer.input_bottleneck)
            layer.attention_bottleneck = bottleneck(layer.attention_bottleneck)
            layer.output_bottleneck = bottleneck(layer.output_bottleneck)

    def _norm_eps(self, x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
        return apply_norm(self.hp.norm, x, norm, eps)

    def _embed_tokens(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = self.w
        x = embedding(ids, w.word)
        if w.trigram:
            # [next token, token, previous token]; zero past either end of the sequence. A padded
            # position is not a neighbour, so a sequence embeds the same alone or in a padded batch.
            nxt = F.pad(x[:, 1:] * valid[:, 1:, None].to(x.dtype), (0, 0, 0, 1))
            prv = F.pad(x[:, :-1], (0, 0, 1, 0))
            x = torch.cat([nxt, x, prv], dim=-1)
        if w.transformation is not None:
            x = linear(x, *w.transformation)
        x = x + w.position[: ids.shape[1]] + w.token_type[0]
        return self._norm_eps(x, w.embed_norm, TORCH_LAYER_NORM_EPS)

    def _bottleneck(self, x: torch.Tensor, b: Bottleneck) -> torch.Tensor:
        return self._norm(linear(x, *b.dense), b.norm)

    def _layer(self, h: torch.Tensor, layer: MobileBertLayer, mask: torch.Tensor | None) -> torch.Tensor:
        if layer.input_bottleneck is not None:
            layer_input = self._bottleneck(h, layer.input_bottleneck)
            if self.w.bottleneck_attention:
                q_in = k_in = v_in = layer_input
            elif layer.attention_bottleneck is not None:
                q_in = k_in = self._bottleneck(h, layer.attention_bottleneck)
                v_in = h
            else:
                q_in = k_in = v_in = h
        else:
            q_in = k_in = v_in = layer_input = h
        heads = self.num_heads
        q, k, v = (linear(t, *lin).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for t, lin in ((q_in, layer.query), (k_in, layer.key), (v_in, layer.value)))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(-2)
        x = self._norm(linear(attn, *layer.attn_out) + layer_input, layer.attn_norm)
        for ffn in layer.ffns:
            x = self._norm(linear(self.act(linear(x, *ffn.inter)), *ffn.out) + x, ffn.norm)
        y = linear(self.act(linear(x, *layer.inter)), *layer.out)
        y = self._norm_eps(y + x, layer.out_norm, TORCH_LAYER_NORM_EPS)
        if layer.output_bottleneck is not None:
            y = self._norm(linear(y, *layer.output_bottleneck.dense) + h, layer.output_bottleneck.norm)
        return y

    def _encode(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded forward -> hidden [B, T, hidden], valid [B, T] bool."""
        if not batch or any(len(seq) == 0 for seq in batch):
            raise AprQaError("every sequence needs at least one token")
        width = max(map(len, batch))
        if width > self.max_positions:
            raise UnsupportedError(f"sequence of {width} tokens exceeds max_position_embeddings {self.max_positions}")
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        valid = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            valid[row, : len(seq)] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        x = self._embed_tokens(ids, valid)
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        for layer in self.w.layers:
            x = self._layer(x, layer, mask)
        return x, valid
