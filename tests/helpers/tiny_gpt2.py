"""Deterministic tiny GPT-2 and GPTBigCode (StarCoder) models, and GGUF files made from them the way
llama.cpp's convert_hf_to_gguf.py (GPT2Model, StarCoderModel) makes them.

Same arguments -> same bytes (seeded tensors, tokenizers trained on the fixed corpus, sorted JSON).
Sizes are tiny: hidden 64, 2 layers, 4 heads of 16, 128 positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tiny_models import CORPUS, _save_safetensors, _seeded_state, add_bpe_tokenizer, train_byte_level_bpe, write_json

EOT = "<|endoftext|>"
# GPT2Tokenizer's saved form: <|endoftext|> is bos, eos and unk; no pad token, no BOS added
TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
    "add_bos_token": False, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
    "model_max_length": 128,
}
SIZES = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128}
DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# llama.cpp's convert_hf_to_gguf.py: these Conv1D weights are transposed to [out, in]
CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


def gpt2_tokenizer(vocab_size: int = 384):
    """A byte-level BPE shaped like GPT-2's own: the plain GPT-2 split (digits not isolated),
    <|endoftext|> the only special token (id 0 here, the last id in GPT-2's vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _state(model, seed: int) -> dict:
    """_seeded_state, with the LayerNorm scales (ln_1, ln_2, ln_f) near 1 like other norms."""
    state = _seeded_state(model, seed)
    for name, t in state.items():
        if ".ln_" in name and name.endswith(".weight"):
            state[name] = 1.0 + (0.1 / 0.08) * t
    return state


def _save(folder, cfg: dict, tok, seed: int, legacy: bool = False) -> Path:
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_cls = "GPT2LMHeadModel" if cfg["model_type"] == "gpt2" else cfg["architectures"][0]
    model = getattr(transformers, model_cls)(transformers.AutoConfig.for_model(**cfg))
    state = _state(model, seed)
    if cfg.get("tie_word_embeddings", True):
        state.pop("lm_head.weight")  # HF checkpoints of tied models do not store it
    if legacy:
        # the hub's original gpt2 files: GPT2Model names (no "transformer." prefix) and the causal-mask
        # buffers every layer saved (a float tril and the -1e4 fill value)
        n = cfg["n_positions"]
        state = {name.removeprefix("transformer."): t for name, t in state.items()}
        for i in range(cfg["n_layer"]):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    _save_safetensors(state, folder, 1)
    write_json(folder / "config.json", {**cfg, "torch_dtype": "float32"})
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", TOKENIZER_CONFIG)
    return folder


def make_tiny_gpt2(folder, *, legacy: bool = False, architecture: str = "GPT2LMHeadModel", tied: bool = True,
                   seed: int = 0) -> Path:
    """HF GPT-2 folder: Conv1D weights [in, out], learned positions, gelu_new, tied head. `legacy`:
    stored like the hub's gpt2 (unprefixed names, attn.bias / attn.masked_bias buffers);
    `architecture` "GPT2Model" for a base-model export; `tied=False` stores its own lm_head."""
    tok = gpt2_tokenizer()
    cfg = {
        "architectures": [architecture], "model_type": "gpt2", "activation_function": "gelu_new",
        **SIZES, "n_ctx": SIZES["n_positions"], "n_inner": None, "layer_norm_epsilon": 1e-5,
        "vocab_size": tok.get_vocab_size(), "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": tied,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02, **DROPOUT,
    }
    return _save(folder, cfg, tok, seed, legacy)


def make_tiny_starcoder(folder, *, multi_query: bool = True, seed: int = 0) -> Path:
    """HF GPTBigCodeForCausalLM folder: nn.Linear weights, multi-query (one K/V head) or multi-head
    attention, gelu_pytorch_tanh, tied head; the tiny BPE isolates digits like StarCoder's."""
    tok = train_byte_level_bpe()
    cfg = {
        "architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode",
        "activation_function": "gelu_pytorch_tanh", **SIZES, "n_inner": None, "layer_norm_epsilon": 1e-5,
        "vocab_size": tok.get_vocab_size(), "bos_token_id": 0, "eos_token_id": 0, "multi_query": multi_query,
        "scale_attn_weights": True, "attention_softmax_in_fp32": True, "scale_attention_softmax_in_fp32": True,
        "initializer_range": 0.02, **DROPOUT,
    }
    return _save(folder, cfg, tok, seed)


# --- GGUF -----------------------------------------------------------------------------------------

def make_tiny_gpt2_gguf(hf_dir, out_path, *, qtype: str = "F32", output_copy: bool = False) -> Path:
    """A gpt2 or starcoder GGUF of the HF folder as convert_hf_to_gguf.py writes it:
    - GPT2Model: context_length from n_ctx, feed_forward_length 4 * n_embd, the causal-mask buffers
      skipped, the four Conv1D weights transposed to [out, in];
    - StarCoderModel: context_length from n_positions, head_count_kv 1 (written for every model);
    - both: names from gguf-py's TensorNameMap, GGML dims, 1-D tensors, norms and position_embd F32,
      other matrices `qtype` (F16, BF16, Q8_0, Q4_0, ...; F16 where rows are not whole blocks).
    `output_copy`: also store the tied head as output.weight, as older converters did for GPT-2."""
    import gguf
    from safetensors.torch import load_file

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    gpt2 = cfg["model_type"] == "gpt2"
    arch = gguf.MODEL_ARCH.GPT2 if gpt2 else gguf.MODEL_ARCH.STARCODER
    n_embd = cfg["n_embd"]
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"tiny-{cfg['model_type']}")
    if gpt2:
        writer.add_block_count(cfg["n_layer"])
        writer.add_context_length(cfg["n_ctx"])
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(4 * n_embd)
        writer.add_head_count(cfg["n_head"])
    else:
        writer.add_context_length(cfg["n_positions"])
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(4 * n_embd)
        writer.add_block_count(cfg["n_layer"])
        writer.add_head_count(cfg["n_head"])
        writer.add_head_count_kv(1)
    writer.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_bpe_tokenizer(writer, hf_dir, pre="gpt-2" if gpt2 else "starcoder")

    names = gguf.TensorNameMap(arch, cfg["n_layer"])
    qt = gguf.GGMLQuantizationType[qtype]
    for f in sorted(hf_dir.glob("*.safetensors")):
        for name, t in load_file(f).items():
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # "we don't need these"
            w = t.float().numpy()
            if gpt2 and name.endswith(CONV1D):
                w = w.T
            gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ValueError(f"{name} has no GGUF name")
            _add(writer, gname, w, qt)
            if output_copy and gname == "token_embd.weight":
                _add(writer, "output.weight", w, qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _add(writer, gname: str, w: np.ndarray, qt) -> None:
    """One tensor at the converter's type: F32 for 1-D, norms and position embeddings."""
    import gguf

    w = np.ascontiguousarray(w, dtype=np.float32)
    always_f32 = w.ndim <= 1 or gname.endswith("_norm.weight") or gname == "position_embd.weight"
    if always_f32 or qt == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(gname, w)
        return
    try:
        data = gguf.quants.quantize(w, qt)
    except gguf.QuantError:  # rows that are not whole blocks: the converter falls back to F16
        qt = gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(w, qt)
    writer.add_tensor(gname, data, raw_dtype=qt)
