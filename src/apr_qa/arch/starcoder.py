"""StarCoder / SantaCoder (GPTBigCodeForCausalLM): GPT-2's block (learned positions, pre-LayerNorm,
plain GELU MLP, biases, tied head) with nn.Linear weights ([out, in], nothing to transpose) and,
by default, multi-query attention: one K and one V head shared by every query head.

The fused c_attn rows are laid out differently by the two attention kinds (as transformers splits
them): multi-query stores [q (hidden); k (head_dim); v (head_dim)], multi-head interleaves them per
head, [q_0; k_0; v_0; q_1; ...]. The canonical tensor keeps the checkpoint's order (GGUF does too:
convert_hf_to_gguf.py copies it); the runtime regroups multi-head rows into [q; k; v].

transformers' `attention_softmax_in_fp32` / `scale_attention_softmax_in_fp32` only choose the
precision of the softmax (and pre-scale and re-scale by the layer index, which cancels); at float32
they change nothing, and the runtime's attention accumulates its softmax in float32 anyway.
"""

from __future__ import annotations

from typing import Any

from . import register
from .gpt2 import GPT2


@register
class StarCoder(GPT2):
    hf_names = ("GPTBigCodeForCausalLM",)
    model_types = ("gpt_bigcode",)
    gguf_arch = "STARCODER"
    family = "StarCoder"
    default_activation = "gelu_pytorch_tanh"

    @classmethod
    def kv_heads(cls, config: dict[str, Any], heads: int) -> int:
        return 1 if config.get("multi_query", True) else heads

    def is_conv1d(self, name: str) -> bool:
        return False  # nn.Linear throughout

    @classmethod
    def gguf_extra_config(cls, get: Any) -> dict[str, Any]:
        # convert_hf_to_gguf.py writes head_count_kv 1 for every GPTBigCode model (llama.cpp runs only
        # multi-query ones); a multi-head checkpoint converted that way fails the c_attn shape check.
        return {"multi_query": get("attention.head_count_kv", 1) == 1}

    def qkv_rows(self, fused: Any) -> Any:
        hp = self.hp
        if hp.num_kv_heads != hp.num_heads:
            return fused  # multi-query: already [q; k; v]
        import torch

        # rows [head, q/k/v, dim] -> [q/k/v, head, dim], by index so that packed blocks move whole rows
        order = torch.arange(fused.shape[0]).view(hp.num_heads, 3, hp.head_dim).transpose(0, 1).reshape(-1)
        return fused[order.to(fused.device)]
