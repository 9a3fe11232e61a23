"""BERT encoder (BertModel, BertForMaskedLM, sentence-transformers exports): absolute position
embeddings, post-LayerNorm layers with GELU, mean pooling over the attention mask for embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import AprQaError, FormatError, UnsupportedError
from .tokenizer import Tokenizer
from .weights import WeightLoader, linear_layout

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class EncoderLayer:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor
    out: torch.Tensor
    out_bias: torch.Tensor
    attn_norm: tuple[torch.Tensor, torch.Tensor]
    inter: torch.Tensor
    inter_bias: torch.Tensor
    down: torch.Tensor
    down_bias: torch.Tensor
    out_norm: tuple[torch.Tensor, torch.Tensor]


class EncoderModel:
    kind = "encoder"

    def __init__(self, source, device: torch.device, dtype: torch.dtype):
        cfg = source.config
        self.config: dict[str, Any] = cfg
        self.device, self.dtype = device, dtype
        self.tokenizer = Tokenizer(source.tokenizer_json, source.tokenizer_config, cfg, source.path)
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedError(f"position_embedding_type {cfg['position_embedding_type']!r} is not supported",
                                   source.path)
        if cfg.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise UnsupportedError(f"hidden_act {cfg['hidden_act']!r} is not supported", source.path)
        self.act = ACTIVATIONS[cfg.get("hidden_act", "gelu")]
        try:
            hidden, self.num_heads = cfg["hidden_size"], cfg["num_attention_heads"]
            num_layers, inter = cfg["num_hidden_layers"], cfg["intermediate_size"]
        except KeyError as exc:
            raise FormatError(f"config lacks {exc.args[0]}", source.path) from None
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.max_positions = int(cfg.get("max_position_embeddings", 512))
        self.vocab_size = int(cfg.get("vocab_size", 0))

        w = WeightLoader(source, device, dtype)
        prefix = "bert." if w.has("bert.embeddings.word_embeddings.weight") else ""

        def norm(name):  # older checkpoints spell LayerNorm parameters gamma/beta
            return tuple(w.get(f"{prefix}{name}.{new}") if w.has(f"{prefix}{name}.{new}")
                         else w.get(f"{prefix}{name}.{old}") for new, old in (("weight", "gamma"), ("bias", "beta")))

        self.word = w.get(prefix + "embeddings.word_embeddings.weight")
        self.position = w.get(prefix + "embeddings.position_embeddings.weight")
        self.token_type = w.get(prefix + "embeddings.token_type_embeddings.weight")
        self.embed_norm = norm("embeddings.LayerNorm")
        self.layers = []
        for i in range(num_layers):
            p = f"{prefix}encoder.layer.{i}."
            qkv = [p + f"attention.self.{n}" for n in ("query", "key", "value")]
            self.layers.append(EncoderLayer(
                qkv=linear_layout(w.fused([n + ".weight" for n in qkv], [(hidden, hidden)] * 3)),
                qkv_bias=w.fused([n + ".bias" for n in qkv], [(hidden,)] * 3),
                out=linear_layout(w.get(p + "attention.output.dense.weight", (hidden, hidden))),
                out_bias=w.get(p + "attention.output.dense.bias", (hidden,)),
                attn_norm=norm(f"encoder.layer.{i}.attention.output.LayerNorm"),
                inter=linear_layout(w.get(p + "intermediate.dense.weight", (inter, hidden))),
                inter_bias=w.get(p + "intermediate.dense.bias", (inter,)),
                down=linear_layout(w.get(p + "output.dense.weight", (hidden, inter))),
                down_bias=w.get(p + "output.dense.bias", (hidden,)),
                out_norm=norm(f"encoder.layer.{i}.output.LayerNorm"),
            ))

    def _layer_norm(self, x, params):
        return F.layer_norm(x, (x.shape[-1],), params[0], params[1], self.eps)

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
        x = F.embedding(ids, self.word) + self.position[:width] + self.token_type[0]
        x = self._layer_norm(x, self.embed_norm)
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        heads, dim = self.num_heads, x.shape[-1] // self.num_heads
        for layer in self.layers:
            q, k, v = F.linear(x, layer.qkv, layer.qkv_bias).unflatten(-1, (3 * heads, dim)).transpose(1, 2).chunk(3, 1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attn = F.linear(attn.transpose(1, 2).flatten(-2), layer.out, layer.out_bias)
            x = self._layer_norm(x + attn, layer.attn_norm)
            ff = F.linear(self.act(F.linear(x, layer.inter, layer.inter_bias)), layer.down, layer.down_bias)
            x = self._layer_norm(x + ff, layer.out_norm)
        return x, valid

    @torch.inference_mode()
    def hidden_states(self, batch: list[list[int]]) -> list[torch.Tensor]:
        hidden, _ = self._encode(batch)
        return [hidden[row, : len(seq)].float().cpu() for row, seq in enumerate(batch)]

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Mean of the last hidden states over real tokens, like sentence-transformers' Pooling (not normalized)."""
        hidden, valid = self._encode([self.tokenizer.encode(t) for t in texts])
        weights = valid.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return pooled.float().cpu()


def build(source, device: torch.device, dtype: torch.dtype) -> EncoderModel:
    return EncoderModel(source, device, dtype)
