"""GGUF <-> HuggingFace tensor names for the llama family (llama, qwen2).

The names are llama.cpp's (gguf-py `constants.py` TENSOR_NAMES); only the decoder tensors a
LlamaForCausalLM / Qwen2ForCausalLM checkpoint holds are mapped.
"""

from __future__ import annotations

import re

# GGUF name stem -> HF name stem (".weight" / ".bias" is carried over unchanged).
_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_HF_GLOBAL = {hf: gg for gg, hf in _GLOBAL.items()}
_HF_BLOCK = {hf: gg for gg, hf in _BLOCK.items()}

_GGUF_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GGUF_GLOBAL_RE = re.compile(r"^(\w+)\.(weight|bias)$")
_HF_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)$")
_HF_GLOBAL_RE = re.compile(r"^([\w.]+)\.(weight|bias)$")


def gguf_to_hf(name: str) -> str | None:
    """HF name of a GGUF tensor, or None when the name is not a llama-family decoder tensor."""
    if m := _GGUF_BLOCK_RE.match(name):
        stem = _BLOCK.get(m[2])
        return f"model.layers.{m[1]}.{stem}.{m[3]}" if stem else None
    if m := _GGUF_GLOBAL_RE.match(name):
        stem = _GLOBAL.get(m[1])
        return f"{stem}.{m[2]}" if stem else None
    return None


def hf_to_gguf(name: str) -> str | None:
    """GGUF name of an HF tensor, or None when it has no llama-family GGUF counterpart."""
    if m := _HF_BLOCK_RE.match(name):
        stem = _HF_BLOCK.get(m[2])
        return f"blk.{m[1]}.{stem}.{m[3]}" if stem else None
    if m := _HF_GLOBAL_RE.match(name):
        stem = _HF_GLOBAL.get(m[1])
        return f"{stem}.{m[2]}" if stem else None
    return None


def is_permuted_q(gguf_name: str) -> bool:
    return bool(_GGUF_BLOCK_RE.match(gguf_name)) and gguf_name.split(".")[2] == "attn_q"


def is_permuted_k(gguf_name: str) -> bool:
    return bool(_GGUF_BLOCK_RE.match(gguf_name)) and gguf_name.split(".")[2] == "attn_k"
