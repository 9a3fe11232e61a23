"""Convert a model source (SafeTensors folder, GGUF, opted-in PyTorch) into a `.apr` v2 file.

Streaming: tensors are read, encoded and appended one at a time, so peak memory is a few tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .apr import AprWriter, TensorEntry
from .dtypes import QUANT_LEVELS, DType
from .errors import AprQaError, FormatError, UnsupportedError
from .fsutil import sha256_file
from .metadata import converter_info, quantization_info, typed_keys_from_config
from .sources import open_source
from .sources.base import TensorInfo, WeightSource

# Integer tensors in checkpoints are buffers (e.g. BERT's position_ids = arange), not parameters.
BUFFER_DTYPES = {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"}


@dataclass
class ConversionResult:
    output: Path
    quant: str
    tensor_count: int
    param_count: int
    seconds: float
    dtype_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_buffer(info: TensorInfo) -> bool:
    return info.dtype.upper() in BUFFER_DTYPES


# Matrices llama.cpp never block-quantizes (llama-quant.cpp): BERT's position and token-type
# embeddings. They are small and a few rows carry the whole signal.
NOT_BLOCK_QUANTIZED = ("position_embeddings.weight", "token_type_embeddings.weight")


def target_dtype(info: TensorInfo, level: DType) -> DType:
    """The dtype a tensor is stored in for a quantization level.

    1-D tensors (norms, biases) stay F32 at every level, as llama.cpp does: they are tiny and
    precision-sensitive. Matrices take the level's dtype, except the few llama.cpp keeps unquantized,
    which stay F32 at block levels. A 32-wide block type needs whole blocks per row; K-quants pad
    rows to whole super-blocks instead (format reference).
    """
    if len(info.shape) < 2 or level == DType.F32:
        return DType.F32
    if level.is_quantized and info.name.endswith(NOT_BLOCK_QUANTIZED):
        return DType.F32
    if level in (DType.Q8_0, DType.Q4_0) and info.shape[-1] % level.block_elems:
        raise UnsupportedError(
            f"tensor {info.name!r} has rows of {info.shape[-1]} values, not a multiple of "
            f"{level.block_elems} required by {level.name}"
        )
    return level


def stored_dtype(info: TensorInfo, level: DType) -> DType:
    """`target_dtype`, except that a Q6_K source tensor asked to become Q4_K is copied as Q6_K:
    keeping the better blocks beats quantizing quantized values twice (llama.cpp's Q4_K_M keeps
    Q6_K tensors too)."""
    wanted = target_dtype(info, level)
    if info.dtype.upper() == "Q6_K" and wanted == DType.Q4_K:
        return DType.Q6_K
    return wanted


def provenance_of(source: WeightSource, manifest: dict[str, Any] | None) -> dict[str, Any]:
    files = []
    for path in sorted(set(source.files)):
        files.append({"path": path.name if path.parent == source.path else str(path.relative_to(source.path.parent)),
                      "size": path.stat().st_size, "sha256": sha256_file(path)})
    prov: dict[str, Any] = {"files": files}
    if manifest:
        prov.update({k: manifest[k] for k in ("repo", "revision", "commit") if k in manifest})
    return prov


def build_metadata(
    source: WeightSource,
    plan: list[TensorEntry],
    quant: str,
    notes: list[str],
    manifest: dict[str, Any] | None,
) -> dict[str, Any]:
    config = source.config
    meta: dict[str, Any] = typed_keys_from_config(config)
    counts: dict[str, int] = {}
    for entry in plan:
        counts[entry.dtype.name] = counts.get(entry.dtype.name, 0) + 1
    names = {e.name for e in plan}
    meta.update(
        {
            "name": (manifest or {}).get("repo") or source.path.stem,
            "param_count": sum(math.prod(e.shape) for e in plan),
            "original_format": source.format,
            "source": (manifest or {}).get("repo") or source.path.name,
            "hf_config": config,
            "tied_embeddings": bool(config.get("tie_word_embeddings", False)) or (
                "lm_head.weight" not in names and config.get("model_type") not in ("bert",)
                and "model.embed_tokens.weight" in names
            ),
            "quantization": quantization_info(quant, QUANT_LEVELS[quant].name, counts),
            "provenance": provenance_of(source, manifest),
            "converter": converter_info(),
            "conversion_notes": notes,
        }
    )
    tok_cfg = source.tokenizer_config or {}
    if tok_cfg.get("chat_template"):
        meta["chat_template"] = tok_cfg["chat_template"]
    if source.tokenizer_json is not None:
        meta["tokenizer.json"] = source.tokenizer_json
        meta["tokenizer.config"] = tok_cfg
        meta.update(tokenizer_summary(source.tokenizer_json, config))
    return meta


def tokenizer_summary(tokenizer_json: str, config: dict[str, Any]) -> dict[str, Any]:
    """The `tokenizer.*` keys the Rust readers look for, derived from the embedded tokenizer.json."""
    import json

    tok = json.loads(tokenizer_json)
    model = tok.get("model", {})
    out: dict[str, Any] = {"tokenizer.model_type": str(model.get("type", "")).lower()}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        out["tokenizer.vocab_size"] = len(vocab) + len(
            [t for t in tok.get("added_tokens", []) if t.get("content") not in vocab]
        )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(config.get(key), (int, list)):
            out[f"tokenizer.{key}"] = config[key]
    return out


def convert(
    source_path: str | Path,
    out_path: str | Path,
    quant: str,
    *,
    allow_pickle: bool = False,
    manifest: dict[str, Any] | None = None,
) -> ConversionResult:
    if quant not in QUANT_LEVELS:
        raise AprQaError(f"unknown quantization {quant!r} (choose from {', '.join(QUANT_LEVELS)})")
    from .quant import quantize

    level = QUANT_LEVELS[quant]
    started = time.perf_counter()
    source = open_source(source_path, allow_pickle=allow_pickle)
    try:
        infos = source.tensors()
        notes = list(source.notes)
        buffers = [t.name for t in infos if is_buffer(t)]
        if buffers:
            notes.append(f"integer buffers not stored (not parameters): {', '.join(buffers)}")
        plan = [TensorEntry(t.name, stored_dtype(t, level), tuple(t.shape)) for t in infos if not is_buffer(t)]
        if not plan:
            raise AprQaError("source has no floating-point tensors", source.path)
        meta = build_metadata(source, plan, quant, notes, manifest)
        with AprWriter(out_path, meta, plan) as writer:
            for entry in plan:
                raw = source.load_raw(entry.name)
                if raw is not None and raw.dtype == entry.dtype:  # already in the stored dtype: copy
                    writer.write(entry.name, np.ascontiguousarray(raw.data))
                    continue
                values = source.load(entry.name)
                if not np.isfinite(values).all():  # quantizers would turn NaN/Inf into garbage blocks
                    raise FormatError(f"tensor {entry.name!r} contains NaN or Inf", source.path)
                writer.write(entry.name, quantize(entry.dtype, values))
                del values
        return ConversionResult(
            output=Path(out_path),
            quant=quant,
            tensor_count=len(plan),
            param_count=meta["param_count"],
            seconds=time.perf_counter() - started,
            dtype_counts=meta["quantization"]["tensor_dtypes"],
            notes=notes,
        )
    finally:
        source.close()
