"""Deterministic tiny DistilBERT, ALBERT and MobileBERT folders (HF layout, WordPiece tokenizer).

Same arguments -> same bytes (seeded weights, counted vocabulary, sorted JSON). `masked_lm=True`
saves the *ForMaskedLM model (encoder under "distilbert." / "albert." / "mobilebert." plus the
head), as save_pretrained does: tied head weights are not stored. Every matrix dimension is a
multiple of 32 so block quantization applies to all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiny_models import _save_safetensors, _seeded_state, wordpiece_tokenizer, write_json

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": True, "unk_token": "[UNK]",
    "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    "model_max_length": 64,
}

# head weights save_pretrained leaves out because they are tied to the word embeddings
TIED = {
    "DistilBertForMaskedLM": ("vocab_projector.weight",),
    "AlbertForMaskedLM": ("predictions.decoder.weight", "predictions.decoder.bias"),
    "MobileBertForMaskedLM": ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
}


def _write(folder, model_cls, config_cls, cfg: dict[str, Any], seed: int) -> Path:
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = _seeded_state(model_cls(config_cls(**cfg)), seed)
    state = {n: t for n, t in state.items() if n not in TIED.get(cfg["architectures"][0], ())}
    _save_safetensors(state, folder, 1)
    write_json(folder / "config.json", cfg)
    wordpiece_tokenizer().save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", TOKENIZER_CONFIG)
    return folder


def distilbert_config(masked_lm: bool = False, **overrides: Any) -> dict[str, Any]:
    return {
        "architectures": ["DistilBertForMaskedLM" if masked_lm else "DistilBertModel"], "model_type": "distilbert",
        "vocab_size": wordpiece_tokenizer().get_vocab_size(), "dim": 64, "n_layers": 2, "n_heads": 4,
        "hidden_dim": 128, "activation": "gelu", "max_position_embeddings": 64, "sinusoidal_pos_embds": False,
        "dropout": 0.1, "attention_dropout": 0.1, "pad_token_id": 0, "initializer_range": 0.02,
        "tie_word_embeddings": True, **overrides,
    }


def make_tiny_distilbert(folder, *, masked_lm: bool = False, seed: int = 0, **overrides: Any) -> Path:
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertModel

    model = DistilBertForMaskedLM if masked_lm else DistilBertModel
    return _write(folder, model, DistilBertConfig, distilbert_config(masked_lm, **overrides), seed)


def albert_config(masked_lm: bool = False, **overrides: Any) -> dict[str, Any]:
    """Factorized embeddings (32 -> 64) and 3 layer steps over 2 groups of 2 shared layers:
    transformers runs groups 0, 0, 1 (int(i / 1.5)), each group's two layers in turn."""
    return {
        "architectures": ["AlbertForMaskedLM" if masked_lm else "AlbertModel"], "model_type": "albert",
        "vocab_size": wordpiece_tokenizer().get_vocab_size(), "embedding_size": 32, "hidden_size": 64,
        "num_hidden_layers": 3, "num_hidden_groups": 2, "inner_group_num": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "hidden_act": "gelu_new", "max_position_embeddings": 64, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "initializer_range": 0.02,
        "tie_word_embeddings": True, **overrides,
    }


def make_tiny_albert(folder, *, masked_lm: bool = False, seed: int = 0, **overrides: Any) -> Path:
    from transformers import AlbertConfig, AlbertForMaskedLM, AlbertModel

    model = AlbertForMaskedLM if masked_lm else AlbertModel
    return _write(folder, model, AlbertConfig, albert_config(masked_lm, **overrides), seed)


def mobilebert_config(masked_lm: bool = False, **overrides: Any) -> dict[str, Any]:
    """google/mobilebert-uncased's shape scaled down: trigram input (3 x 32 -> 64), bottleneck 32
    shared by queries and keys, 2 stacked feed-forward blocks, NoNorm, ReLU."""
    return {
        "architectures": ["MobileBertForMaskedLM" if masked_lm else "MobileBertModel"], "model_type": "mobilebert",
        "vocab_size": wordpiece_tokenizer().get_vocab_size(), "embedding_size": 32, "hidden_size": 64,
        "intra_bottleneck_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "hidden_act": "relu", "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "trigram_input": True, "use_bottleneck": True, "use_bottleneck_attention": False,
        "key_query_shared_bottleneck": True, "num_feedforward_networks": 2, "normalization_type": "no_norm",
        "classifier_activation": True, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "pad_token_id": 0, "initializer_range": 0.02, "tie_word_embeddings": True, **overrides,
    }


def make_tiny_mobilebert(folder, *, masked_lm: bool = False, seed: int = 0, **overrides: Any) -> Path:
    from transformers import MobileBertConfig, MobileBertForMaskedLM, MobileBertModel

    model = MobileBertForMaskedLM if masked_lm else MobileBertModel
    return _write(folder, model, MobileBertConfig, mobilebert_config(masked_lm, **overrides), seed)
