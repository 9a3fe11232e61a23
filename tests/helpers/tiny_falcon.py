"""Deterministic tiny Falcon models, one per form transformers' modeling_falcon.py implements, and
GGUF files made from them the way llama.cpp's convert_hf_to_gguf.py (FalconModel) makes them.

Hidden 64, 2 layers, the byte-level BPE of tiny_models; every tensor from a seeded generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import tiny_models

# config.json overrides per form, spelled as the hub checkpoints of each kind spell them
FORMS: dict[str, dict] = {
    # falcon-7b: multi-query, one input_layernorm feeding attention and MLP, rotary, tied head
    "mqa": {"num_attention_heads": 4, "multi_query": True, "parallel_attn": True, "new_decoder_architecture": False},
    # falcon-40b/180b: 2 KV groups of 4 query heads, ln_attn + ln_mlp, untied head
    "new_decoder": {"num_attention_heads": 8, "num_kv_heads": 2, "new_decoder_architecture": True,
                    "tie_word_embeddings": False},
    # Falcon2-11B: the new decoder with one shared input_layernorm
    "new_decoder_1ln": {"num_attention_heads": 8, "num_kv_heads": 4, "new_decoder_architecture": True,
                        "num_ln_in_parallel_attn": 1},
    # multi_query=False (QKV per head): parallel and rotary, as llama.cpp can still convert it when
    # config.json states num_kv_heads == heads
    "mha_parallel": {"num_attention_heads": 4, "num_kv_heads": 4, "multi_query": False, "parallel_attn": True},
    # falcon-rw-1b: ALiBi, per-head QKV, sequential (post_attention_layernorm), biases everywhere;
    # 16 heads so that the ALiBi slopes are not powers of two and their bfloat16 rounding shows
    "alibi": {"num_attention_heads": 16, "alibi": True, "multi_query": False, "parallel_attn": False,
              "bias": True, "tie_word_embeddings": False},
    # the sequential form with rotary positions and biases; Falcon2's raised rope_theta (which
    # llama.cpp's converter does not carry into GGUF)
    "sequential": {"num_attention_heads": 4, "multi_query": False, "parallel_attn": False, "bias": True,
                   "tie_word_embeddings": False, "rope_theta": 500042.0},
}
# forms llama.cpp's FALCON architecture can run (rotary, parallel, bias-free)
GGUF_FORMS = ("mqa", "new_decoder", "new_decoder_1ln", "mha_parallel")


def falcon_config(form: str, vocab_size: int) -> dict:
    return {
        "architectures": ["FalconForCausalLM"], "model_type": "falcon", "activation": "gelu", "alibi": False,
        "bias": False, "hidden_size": 64, "num_hidden_layers": 2, "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": 256, "vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0,
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "initializer_range": 0.02, "tie_word_embeddings": True,
        **FORMS[form],
    }


def make_tiny_falcon(folder, form: str = "mqa", *, seed: int = 0) -> Path:
    """HF FalconForCausalLM folder of the given form (a key of FORMS)."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_models.train_byte_level_bpe()
    cfg = falcon_config(form, tok.get_vocab_size())
    torch.manual_seed(seed)
    hf_cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    state = tiny_models._seeded_state(FalconForCausalLM(FalconConfig(**hf_cfg)), seed)
    # Falcon's norms are ln_attn / ln_mlp / ln_f too: near 1 (not 1, not 0) like every other norm
    gen = torch.Generator().manual_seed(seed + 1)
    for name, t in state.items():
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            noise = torch.randn(t.shape, generator=gen)
            state[name] = 1.0 + 0.1 * noise if name.endswith("weight") else 0.05 * noise
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight")  # HF checkpoints of tied models do not store it
    tiny_models._save_safetensors(state, folder, 1)
    tiny_models.write_json(folder / "config.json", {**cfg, "torch_dtype": "float32"})
    tok.save(str(folder / "tokenizer.json"))
    tiny_models.write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": tiny_models.CHAT_TEMPLATE,
    })
    return folder


def regroup_qkv(w: np.ndarray, n_head: int, n_head_kv: int, hidden: int) -> np.ndarray:
    """convert_hf_to_gguf.py FalconModel.modify_tensors: kv groups of (q heads, k, v) -> [q; k; v]."""
    head_dim = hidden // n_head
    qkv = w.reshape(n_head_kv, n_head // n_head_kv + 2, head_dim, head_dim * n_head)
    q = qkv[:, :-2].reshape(n_head * head_dim, head_dim * n_head)
    k = qkv[:, [-2]].reshape(n_head_kv * head_dim, head_dim * n_head)
    v = qkv[:, [-1]].reshape(n_head_kv * head_dim, head_dim * n_head)
    return np.concatenate((q, k, v)).reshape(w.shape)


def make_tiny_falcon_gguf(hf_dir, out_path, *, qtype: str = "F32") -> Path:
    """A FALCON GGUF of the HF folder as convert_hf_to_gguf.py writes it: FalconModel's metadata
    (context 2048 and feed_forward 4 * hidden whatever config.json says, head_count_kv from num_kv_heads
    / n_head_kv, else 1), GGUF names from gguf-py's TensorNameMap, query_key_value regrouped to
    [q; k; v], tiny_models.add_bpe_tokenizer's tokenizer keys. 1-D tensors
    stay F32; 2-D ones are stored as `qtype` (F32, F16, Q8_0, Q4_0, ...)."""
    import gguf
    from safetensors.numpy import load_file

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    state = load_file(hf_dir / "model.safetensors")
    n_head = cfg.get("num_attention_heads") or cfg["n_head"]
    n_head_kv = cfg.get("num_kv_heads") or cfg.get("n_head_kv", 1)
    hidden = cfg["hidden_size"]

    writer = gguf.GGUFWriter(out_path, "falcon")
    writer.add_name("tiny-falcon")
    writer.add_context_length(2048)  # not in config.json
    writer.add_tensor_data_layout("jploski")  # qkv tensor transform
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(4 * hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    tiny_models.add_bpe_tokenizer(writer, hf_dir)  # the tiny BPE isolates digits: pre "smollm"

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.FALCON, cfg["num_hidden_layers"])
    qt = gguf.GGMLQuantizationType[qtype]
    for name, w in state.items():
        w = w.astype(np.float32)
        if "query_key_value" in name:
            w = regroup_qkv(w, n_head, n_head_kv, hidden)
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ValueError(f"llama.cpp's FALCON has no tensor for {name}")
        if w.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, np.ascontiguousarray(w))
        elif qt == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gname, w.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(w, qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path

