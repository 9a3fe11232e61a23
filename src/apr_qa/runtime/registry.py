"""Architecture name (config["architectures"][0]) -> builder. Adding an architecture is a new module
plus one line here; builders are imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UnsupportedError

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "apr_qa.runtime.llama:build",
    "MistralForCausalLM": "apr_qa.runtime.llama:build",
    "Qwen2ForCausalLM": "apr_qa.runtime.llama:build_qwen2",
    "BertModel": "apr_qa.runtime.bert:build",
    "BertForMaskedLM": "apr_qa.runtime.bert:build",
}

# configs without an "architectures" list (some sentence-transformers exports) still name a model_type
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "bert": "BertModel"}


def architecture_of(config: dict[str, Any]) -> str:
    names = config.get("architectures") or []
    if names:
        return names[0]
    if config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    raise UnsupportedError("config names no architecture (neither architectures nor a known model_type)")


def builder_for(config: dict[str, Any], path=None):
    name = architecture_of(config)
    if name not in ARCHITECTURES:
        raise UnsupportedError(f"architecture {name} is not supported by the runtime "
                               f"(supported: {', '.join(sorted(ARCHITECTURES))})", path)
    module, function = ARCHITECTURES[name].split(":")
    return getattr(importlib.import_module(module), function)
