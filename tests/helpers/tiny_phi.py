"""Deterministic tiny Phi and StableLM models, and GGUF files made from them the way llama.cpp's
convert_hf_to_gguf.py (Phi2Model, StableLMModel) makes them.

Same arguments -> same bytes (seeded tensors, the shared tiny BPE, sorted JSON). Sizes are tiny:
hidden 64, 2 layers, 4 heads of 16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import tiny_models
from tiny_models import _save_safetensors, _seeded_state, train_byte_level_bpe, write_json

# <|endoftext|> is id 0 of the tiny BPE: GPT-2 style bos = eos = unk, as Phi and StableLM ship it
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "add_bos_token": False, "clean_up_tokenization_spaces": False,
    "model_max_length": 256, "chat_template": tiny_models.CHAT_TEMPLATE,
}


def phi_config(vocab_size: int) -> dict:
    """config.json of the tiny Phi (plain spelling: partial_rotary_factor and rope_theta top-level)."""
    return {
        "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_act": "gelu_new",
        "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 256, "layer_norm_eps": 1e-5,
        "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "qk_layernorm": False, "vocab_size": vocab_size,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.02,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
    }


def stablelm_config(vocab_size: int, *, qkv_bias: bool = False, parallel_residual: bool = False,
                    num_kv_heads: int = 4) -> dict:
    return {
        "architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "hidden_act": "silu",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": num_kv_heads, "max_position_embeddings": 256, "layer_norm_eps": 1e-5,
        "partial_rotary_factor": 0.25, "rope_theta": 10000.0, "use_qkv_bias": qkv_bias, "qk_layernorm": False,
        "use_parallel_residual": parallel_residual, "vocab_size": vocab_size, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.02, "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }


def _save(folder, model_cls: str, config_cls: str, cfg: dict, seed: int) -> Path:
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**cfg))
    _save_safetensors(_seeded_state(model, seed), folder, 1)
    write_json(folder / "config.json", {**cfg, "torch_dtype": "float32"})
    train_byte_level_bpe().save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", TOKENIZER_CONFIG)
    return folder


def make_tiny_phi(folder, *, seed: int = 0) -> Path:
    """HF PhiForCausalLM folder: hidden 64, 2 layers, 4 heads, half of each head rotates."""
    return _save(folder, "PhiForCausalLM", "PhiConfig", phi_config(train_byte_level_bpe().get_vocab_size()), seed)


def make_tiny_stablelm(folder, *, qkv_bias: bool = False, parallel_residual: bool = False, num_kv_heads: int = 4,
                       seed: int = 0) -> Path:
    """HF StableLmForCausalLM folder: a quarter of each head rotates; optionally q/k/v biases and the
    parallel residual (StableLM 2 12B's form: no post-attention norm)."""
    cfg = stablelm_config(train_byte_level_bpe().get_vocab_size(), qkv_bias=qkv_bias,
                          parallel_residual=parallel_residual, num_kv_heads=num_kv_heads)
    return _save(folder, "StableLmForCausalLM", "StableLmConfig", cfg, seed)


# --- GGUF -----------------------------------------------------------------------------------------

def _add_gpt2_vocab(writer, hf_dir: Path) -> None:
    """convert_hf_to_gguf.py's _set_vocab_gpt2: byte-level BPE tokens and types (added special tokens
    CONTROL), pre-tokenizer name, then gguf.SpecialVocab for merges, special ids and chat template.
    The tiny BPE isolates digits before the GPT-2 split, which llama.cpp calls "smollm"."""
    import gguf

    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tok["model"]["vocab"].items()}
    types = dict.fromkeys(vocab, gguf.TokenType.NORMAL)
    for added in tok["added_tokens"]:
        vocab[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list([vocab[i] for i in range(len(vocab))])
    writer.add_token_types([types[i] for i in range(len(vocab))])
    gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(writer)


def _add_tokenizer(writer, hf_dir: Path) -> None:
    shared = getattr(tiny_models, "add_bpe_tokenizer", None)  # the shared helper, once it exists
    (shared or _add_gpt2_vocab)(writer, hf_dir)


def _write_tensors(writer, hf_dir: Path, arch, n_layers: int, qtype: str) -> None:
    """Tensors under gguf-py's TensorNameMap names, q/k/v as they are (no permutation for NEOX RoPE),
    GGML dims; 1-D tensors and norms F32, other matrices `qtype` (F32, F16, BF16, Q8_0, Q4_0, Q4_1)."""
    import gguf
    from safetensors.torch import load_file

    names = gguf.TensorNameMap(arch, n_layers)
    qt = gguf.GGMLQuantizationType[qtype]
    for f in sorted(hf_dir.glob("*.safetensors")):
        for name, t in load_file(f).items():
            w = t.float().numpy()
            gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ValueError(f"{name} has no GGUF name")
            if w.ndim == 1 or gname.endswith("_norm.weight") or qt == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gname, np.ascontiguousarray(w, dtype=np.float32))
            elif qt == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gname, w.astype(np.float16))
            else:
                writer.add_tensor(gname, gguf.quants.quantize(w, qt), raw_dtype=qt)


def _finish(writer, out_path: Path) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def make_tiny_phi_gguf(hf_dir, out_path, *, qtype: str = "F32") -> Path:
    """A phi2 GGUF as Phi2Model.set_gguf_parameters writes one: feed_forward_length 4 * hidden,
    head_count_kv = head_count, rope.dimension_count = int(factor * hidden) // heads, no BOS added."""
    import gguf

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PHI2])
    writer.add_name("tiny-phi")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(4 * n_embd)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_eps(cfg["layer_norm_eps"])
    writer.add_rope_dimension_count(int(cfg["partial_rotary_factor"] * n_embd) // n_head)
    writer.add_add_bos_token(False)
    _add_tokenizer(writer, hf_dir)
    _write_tensors(writer, hf_dir, gguf.MODEL_ARCH.PHI2, cfg["num_hidden_layers"], qtype)
    return _finish(writer, out_path)


def make_tiny_stablelm_gguf(hf_dir, out_path, *, qtype: str = "F32") -> Path:
    """A stablelm GGUF as StableLMModel.set_gguf_parameters writes one (rope.dimension_count =
    int(factor * head_dim), use_parallel_residual recorded, defaulting to True when config lacks it)."""
    import gguf

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.STABLELM])
    writer.add_name("tiny-stablelm")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_rope_dimension_count(int(cfg["partial_rotary_factor"] * head_dim))
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_parallel_residual(cfg.get("use_parallel_residual", True))
    writer.add_layer_norm_eps(cfg["layer_norm_eps"])
    _add_tokenizer(writer, hf_dir)
    _write_tensors(writer, hf_dir, gguf.MODEL_ARCH.STABLELM, cfg["num_hidden_layers"], qtype)
    return _finish(writer, out_path)
