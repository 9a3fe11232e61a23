"""One post-LayerNorm encoder (BERT and its relatives), configured by `Hyperparams`, and the
sentence-embedding pooling of sentence-transformers.

An architecture module binds its checkpoint to `EncoderWeights`: the embedding sum (words,
learned positions, optional token types, optional projection from a smaller embedding size as in
ALBERT) and the layers (the same objects repeated when layers share weights).
"""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..arch.base import Hyperparams
from ..errors import AprQaError, UnsupportedError
from .activations import ACTIVATIONS
from .norms import Norm, apply_norm
from .kernels import prepare_linear
from .packed import embedding, linear
from .tokenizer import Tokenizer

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass
class EncoderLayer:
    qkv: Any                         # rows: q, k, v (hidden each); linear weights: tensors or packed blocks
    qkv_bias: torch.Tensor
    out: Any
    out_bias: torch.Tensor
    attn_norm: Norm
    inter: Any
    inter_bias: torch.Tensor
    down: Any
    down_bias: torch.Tensor
    out_norm: Norm


@dataclass
class EncoderWeights:
    word: Any                        # tensor or packed blocks (rows read on lookup)
    position: torch.Tensor
    embed_norm: Norm
    layers: list[EncoderLayer]
    token_type: torch.Tensor | None = None
    projection: tuple[Any, torch.Tensor] | None = None  # embedding size -> hidden (ALBERT)


def pool(hidden: torch.Tensor, valid: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, T, H] hidden states over the real tokens -> [B, H], as sentence-transformers' Pooling."""
    weights = valid.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)
    summed, counts = (hidden * weights).sum(dim=1), weights.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        return summed / counts.sqrt()
    if mode == "mean":
        return summed / counts
    raise UnsupportedError(f"pooling mode {mode!r} is not supported ({', '.join(POOLING_MODES)})")


def pooling_mode(pooling_config: dict[str, Any] | None) -> str:
    """The mode a sentence-transformers `1_Pooling/config.json` names (mean when there is none)."""
    if not pooling_config:
        return "mean"
    chosen = [mode for mode in POOLING_MODES if pooling_config.get(f"pooling_mode_{mode}_tokens")
              or (mode == "cls" and pooling_config.get("pooling_mode_cls_token"))]
    if len(chosen) != 1:
        raise UnsupportedError(f"pooling config selects {chosen or 'no mode'}; exactly one of "
                               f"{', '.join(POOLING_MODES)} is supported")
    return chosen[0]


class EncoderModel:
    kind = "encoder"

    def __init__(self, hp: Hyperparams, weights: EncoderWeights, tokenizer: Tokenizer, config: dict[str, Any],
                 device: torch.device, dtype: torch.dtype, pooling: str = "mean"):
        self.hp, self.config, self.tokenizer = hp, config, tokenizer
        self.device, self.dtype = device, dtype
        self.act = ACTIVATIONS[hp.activation]
        self.num_heads, self.vocab_size, self.max_positions = hp.num_heads, hp.vocab_size, hp.max_positions
        self.w = weights
        self.pooling = pooling
        self._prepare_linears(device)

    def _prepare_linears(self, device: torch.device) -> None:
        """Packed blocks -> their kernel objects; layers shared between steps (ALBERT) stay shared."""
        done: dict[int, Any] = {}

        def prepared(weight: Any) -> Any:
            if id(weight) not in done:
                done[id(weight)] = prepare_linear(weight, device)
            return done[id(weight)]

        for layer in self.w.layers:
            layer.qkv, layer.out = prepared(layer.qkv), prepared(layer.out)
            layer.inter, layer.down = prepared(layer.inter), prepared(layer.down)
        if self.w.projection is not None:
            self.w.projection = (prepared(self.w.projection[0]), self.w.projection[1])

    def _norm(self, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        return apply_norm(self.hp.norm, x, norm, self.hp.norm_eps)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.w
        x = embedding(ids, w.word) + w.position[: ids.shape[1]]
        if w.token_type is not None:
            x = x + w.token_type[0]
        x = self._norm(x, w.embed_norm)
        return linear(x, *w.projection) if w.projection is not None else x

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
        x = self._embed(ids)
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        heads = self.num_heads
        for layer in self.w.layers:
            q, k, v = linear(x, layer.qkv, layer.qkv_bias).unflatten(-1, (3 * heads, -1)).transpose(1, 2).chunk(3, 1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attn = linear(attn.transpose(1, 2).flatten(-2), layer.out, layer.out_bias)
            x = self._norm(x + attn, layer.attn_norm)
            ff = linear(self.act(linear(x, layer.inter, layer.inter_bias)), layer.down, layer.down_bias)
            x = self._norm(x + ff, layer.out_norm)
        return x, valid

    @torch.inference_mode()
    def hidden_states(self, batch: list[list[int]]) -> list[torch.Tensor]:
        hidden, _ = self._encode(batch)
        return [hidden[row, : len(seq)].float().cpu() for row, seq in enumerate(batch)]

    @torch.inference_mode()
    def embed(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        """One vector per text: the model's pooling over the last hidden states of its real tokens."""
        hidden, valid = self._encode([self.tokenizer.encode(t) for t in texts])
        pooled = pool(hidden, valid, self.pooling).float().cpu()
        return F.normalize(pooled, dim=-1) if normalize else pooled


def build_encoder(arch: Any, source: Any, device: Any, dtype: Any, layers: Callable[[Any], list],
                  token_type: bool, **extras: Callable[[Any], Any]) -> Any:
    """The runtime model of a BERT-like encoder family: what the families share around their own layer
    wiring. `layers(w)` builds the EncoderLayers from the WeightLoader `w`; the embeddings (word, position,
    token type when the family has one, LayerNorm) sit under the family's `prefix`; `extras` are further
    EncoderWeights fields, each read from `w`; pooling follows the source's sentence-transformers config."""
    from .tokenizer import Tokenizer
    from .weights import WeightLoader

    w = WeightLoader(source, device, dtype, arch.tensors())
    built = layers(w)
    embeddings = arch.prefix + "embeddings."
    weights = EncoderWeights(
        word=w.get(embeddings + "word_embeddings.weight"), position=w.dense(embeddings + "position_embeddings.weight"),
        token_type=w.dense(embeddings + "token_type_embeddings.weight") if token_type else None,
        embed_norm=w.norm(embeddings + "LayerNorm"), layers=built, **{name: read(w) for name, read in extras.items()})
    tokenizer = Tokenizer(source.tokenizer_json, source.tokenizer_config, arch.config, source.path)
    return EncoderModel(arch.hp, weights, tokenizer, arch.config, device, dtype,
                        pooling_mode(getattr(source, "pooling_config", None)))
