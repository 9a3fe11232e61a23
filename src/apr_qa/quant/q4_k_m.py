"""llama.cpp's Q4_K_M mixture: Q4_K weights, with the tensors quantization hurts most kept in Q6_K.

llama.cpp chooses each tensor's type by its GGUF name (its quantizer's `llama_tensor_get_type`);
this module makes the same choice through the architecture registry's GGUF names, for the Q4_K_M
file type only:
- the output projection (and the token embedding of a model whose output shares it, i.e. has no
  `output.weight`) is Q6_K; Q8_0 for Falcon, and when its rows are not whole 256-value super-blocks;
- value projections (`attn_v`, and the fused `attn_qkv` / `attn_kv_b` that contain them) and
  `ffn_down` are Q6_K on the "use more bits" layers: the first and last eighth of the stack and
  every third layer in between (`use_more_bits`); they matter most for the output;
- Falcon's `ffn_down` instead: Q6_K on the first sixteenth of the layers, Q5_K on the other
  use-more-bits layers; a 70B llama's other value projections are Q5_K;
- everything else keeps the level's Q4_K.
Layers are counted as llama.cpp counts them: the i-th tensor of its kind, tensors ordered by block
number then name, out of the number of such tensors (value projections) or of layers (ffn_down).

Differences, both noted in the conversion notes: apr-qa has no Q5_K, so the two Q5_K choices become
Q6_K (more bits, never fewer); and a row that is not whole super-blocks is padded, as at the q4_k
level (llama.cpp would fall back to Q5_0/Q8_0), so bytes equal llama.cpp's where rows are multiples
of 256 values. Families without llama.cpp tensor names get no promotions (every matrix Q4_K).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..dtypes import DType

if TYPE_CHECKING:
    from ..arch import Architecture
    from ..sources.base import TensorInfo

SUPER_BLOCK = 256
_BLOCK = re.compile(r"blk\.(\d+)\.")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's layer pattern for the extra bits (C integer division)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def category(gguf_name: str) -> str:
    """The tensor's role, matched on its GGUF name in llama.cpp's order (first match wins)."""
    if gguf_name == "output.weight":
        return "output"
    if gguf_name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, role in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                       ("ffn_down", "ffn_down")):
        if part in gguf_name:
            return role
    return "other"


def _layer_order(gguf_name: str) -> tuple[int, str]:
    """llama.cpp's tensor order: by block number (none first), then by name."""
    match = _BLOCK.match(gguf_name)
    return (int(match.group(1)) if match else -1, gguf_name)


def _is_70b(arch: Architecture) -> bool:
    """llama.cpp's LLM_TYPE_70B among our families: 80-layer grouped-query llama, 80-layer Qwen2."""
    hp = arch.hp
    if arch.gguf_arch == "LLAMA":
        return hp.num_layers == 80 and hp.num_kv_heads != hp.num_heads
    return arch.gguf_arch == "QWEN2" and hp.num_layers == 80


def promotions(arch: Architecture, infos: Iterable[TensorInfo]) -> tuple[dict[str, DType], list[str]]:
    """Canonical tensor name -> the dtype Q4_K_M gives it instead of Q4_K, and notes on deviations.

    Only matrices are returned; the caller's exemptions (1-D tensors, position embeddings, norms)
    still apply on top."""
    named = {}
    for info in infos:
        gguf_name = arch.gguf_name(info.name)
        if gguf_name is not None and len(info.shape) >= 2 and gguf_name.endswith("weight"):
            named[gguf_name] = info
    if not named:
        return {}, [f"q4_k_m: {arch.family} has no llama.cpp tensor names, so no tensor is promoted "
                    "(every matrix Q4_K)"]
    falcon = arch.gguf_arch == "FALCON"
    tied = not any(category(n) == "output" for n in named)
    value_projections = sorted((n for n in named if category(n) == "attn_v"), key=_layer_order)
    ffn_down = sorted((n for n in named if category(n) == "ffn_down"), key=_layer_order)
    n_layers = arch.hp.num_layers

    chosen: dict[str, DType] = {}
    no_q5_k: list[str] = []
    for gguf_name, info in named.items():
        role = category(gguf_name)
        if role == "output" or (tied and role == "token_embd"):
            whole = info.shape[-1] % SUPER_BLOCK == 0
            chosen[info.name] = DType.Q6_K if whole and not falcon else DType.Q8_0
        elif role == "attn_v":
            if use_more_bits(value_projections.index(gguf_name), len(value_projections)):
                chosen[info.name] = DType.Q6_K
            elif _is_70b(arch):
                chosen[info.name] = DType.Q6_K
                no_q5_k.append(info.name)
        elif role == "ffn_down":
            i = ffn_down.index(gguf_name)
            if falcon and i < n_layers // 16:
                chosen[info.name] = DType.Q6_K
            elif use_more_bits(i, n_layers):
                chosen[info.name] = DType.Q6_K
                if falcon:
                    no_q5_k.append(info.name)
    notes = []
    if no_q5_k:
        notes.append(f"q4_k_m: {len(no_q5_k)} tensors llama.cpp stores as Q5_K are Q6_K (apr-qa has no Q5_K), "
                     f"e.g. {no_q5_k[0]}")
    return chosen, notes
