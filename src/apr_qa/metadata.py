"""The .apr metadata JSON: what a converted file says about itself.

Typed keys are the ones the aprender/realizar readers know (see the format reference); everything
else is a custom key they keep verbatim. The file is self-contained: the full HF config, the
tokenizer, the chat template, provenance of every source file and the converter's version.
"""

from __future__ import annotations

import json
from typing import Any

from . import __version__
from .arch import Architecture
from .dtypes import QUANT_LEVELS

# Typed keys (reader-known) with the JSON type each must have when present.
TYPED_KEYS: dict[str, type | tuple[type, ...]] = {
    "model_type": str,
    "name": str,
    "architecture": str,
    "hidden_size": int,
    "num_layers": int,
    "num_heads": int,
    "num_kv_heads": int,
    "vocab_size": int,
    "intermediate_size": int,
    "max_position_embeddings": int,
    "rope_theta": (int, float),
    "rope_type": int,  # GGML rope mode in aprender; we do not write it
    "rms_norm_eps": (int, float),
    "head_dim": int,
    "param_count": int,
    "chat_template": str,
    "original_format": str,
    "source": str,
}

# Keys every file we write carries (gate V2 checks them).
REQUIRED_KEYS = (
    "model_type",
    "architecture",
    "hidden_size",
    "num_layers",
    "vocab_size",
    "param_count",
    "original_format",
    "source",
    "hf_config",
    "quantization",
    "provenance",
    "converter",
)

# How our dtype codes are to be read: codes 2 and 8 follow GGML, not aprender (format reference).
DTYPE_CODE_CONVENTION = "ggml: 0=F32 1=F16 2=Q4_0 8=Q8_0 12=Q4_K 14=Q6_K 30=BF16"


def typed_keys(arch: Architecture) -> dict[str, Any]:
    """The reader-known typed keys, from the architecture's normalised hyperparameters (so every
    family fills them, whatever its config.json calls them)."""
    hp, config = arch.hp, arch.config
    names = config.get("architectures") or [arch.hf_names[0]]
    out: dict[str, Any] = {
        "model_type": config.get("model_type") or arch.model_types[0],
        "architecture": names[0],
        "hidden_size": hp.hidden_size,
        "num_layers": hp.num_layers,
        "num_heads": hp.num_heads,
        "num_kv_heads": hp.num_kv_heads,
        "vocab_size": hp.vocab_size,
        "intermediate_size": hp.intermediate_size,
        "max_position_embeddings": hp.max_positions,
        "head_dim": hp.head_dim,
    }
    if hp.positions == "rope":
        out["rope_theta"] = hp.rope_theta
    if hp.norm == "rms":
        out["rms_norm_eps"] = hp.norm_eps
    # `rope_type` is left out: aprender reads it as a GGML rope-mode integer, and the HF
    # `rope_scaling` it would summarize is kept whole in `hf_config`.
    return out


def schema_problems(meta: dict[str, Any]) -> list[str]:
    """Every way `meta` departs from the schema (empty list: valid). Used by gate V2."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in meta]
    for key, typ in TYPED_KEYS.items():
        if key in meta and (not isinstance(meta[key], typ) or isinstance(meta[key], bool)):
            problems.append(f"key {key!r} has type {type(meta[key]).__name__}")
    if "hf_config" in meta and not isinstance(meta["hf_config"], dict):
        problems.append("key 'hf_config' is not an object")
    prov = meta.get("provenance")
    if isinstance(prov, dict):
        for f in prov.get("files", []):
            if not (isinstance(f, dict) and len(str(f.get("sha256", ""))) == 64):
                problems.append(f"provenance entry without sha256: {f!r}")
    elif prov is not None:
        problems.append("key 'provenance' is not an object")
    return problems


# aprender deserializes `quantization` into a struct needing quant_type, bits and symmetric; our own
# fields ride along (serde ignores unknown fields).
def quantization_info(level: str, weights_dtype: str, tensor_dtypes: dict[str, int]) -> dict[str, Any]:
    bits, symmetric = QUANT_LEVELS[level].bits, QUANT_LEVELS[level].symmetric
    return {
        "quant_type": level,
        "bits": bits,
        "symmetric": symmetric,
        "level": level,
        "weights_dtype": weights_dtype,
        "tensor_dtypes": tensor_dtypes,
        "dtype_codes": DTYPE_CODE_CONVENTION,
    }


def converter_info() -> dict[str, Any]:
    import numpy

    return {"name": "apr-qa", "version": __version__, "numpy": numpy.__version__}


def dumps(meta: dict[str, Any]) -> bytes:
    """Canonical encoding: sorted keys, compact, UTF-8 (same metadata -> same bytes)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
