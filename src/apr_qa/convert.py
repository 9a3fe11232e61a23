"""Convert a model source (SafeTensors folder, GGUF, opted-in PyTorch) into a `.apr` v2 file.

Streaming: tensors are read, encoded and appended one at a time, so peak memory is a few tensors.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .apr import AprWriter, TensorEntry
from .dtypes import QUANT_LEVELS, DType
from .errors import AprQaError, FormatError
from .fsutil import sha256_file
from .arch import Architecture, UnsupportedArchitecture
from .metadata import converter_info, quantization_info, typed_keys
from .sources import open_source
from .sources.base import ModelSource, TensorInfo, WeightSource

@dataclass
class ConversionResult:
    output: Path
    quant: str
    tensor_count: int
    param_count: int
    seconds: float
    dtype_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def target_dtype(arch: Architecture, info: TensorInfo, level: DType) -> tuple[DType, str | None]:
    """The dtype a tensor is stored in for a quantization level, and why it differs from the level.

    As llama.cpp's quantizer does: 1-D tensors (norms, biases) stay F32 at every level, being tiny and
    precision-sensitive; matrices the architecture keeps unquantized (position embeddings, token
    types) stay F32 at block levels; a matrix whose rows are not whole 32-value blocks cannot be
    Q8_0/Q4_0 and falls back to F16. K-quants (q4_k, q6_k, q4_k_m) pad rows to whole 256-value
    super-blocks instead (.apr layout): where llama.cpp would switch such a tensor to another type
    (Q4_K to Q5_0, Q6_K to Q8_0), the .apr keeps the level's type, so its bytes equal llama.cpp's
    wherever rows are whole super-blocks and no tensor silently changes type.
    """
    if len(info.shape) < 2 or level == DType.F32:
        return DType.F32, None
    if level.is_quantized and arch.keep_unquantized(info.name):
        return DType.F32, None
    if level in (DType.Q8_0, DType.Q4_0) and info.shape[-1] % level.block_elems:
        return DType.F16, (f"{info.name}: rows of {info.shape[-1]} values are not whole {level.block_elems}-value "
                           f"{level.name} blocks; stored as F16 (llama.cpp's fallback)")
    return level, None


def stored_dtype(arch: Architecture, info: TensorInfo, level: DType) -> tuple[DType, str | None]:
    """`target_dtype`, except that a Q6_K source tensor asked to become Q4_K is copied as Q6_K:
    keeping the better blocks beats quantizing quantized values twice (llama.cpp's Q4_K_M keeps
    Q6_K tensors too)."""
    wanted, note = target_dtype(arch, info, level)
    if info.dtype.upper() == "Q6_K" and wanted == DType.Q4_K:
        return DType.Q6_K, None
    return wanted, note


def stored_dtypes(arch: Architecture, infos: list[TensorInfo], quant: str) -> tuple[dict[str, DType], list[str]]:
    """Every tensor's stored dtype at level `quant` and the notes on what differs from the level.

    A mixture level (one with a recipe, e.g. q4_k_m) first moves the tensors its recipe names to
    other dtypes; the exemptions and fallbacks of `stored_dtype` apply to every tensor either way."""
    level = QUANT_LEVELS[quant]
    promoted: dict[str, DType] = {}
    notes: list[str] = []
    if level.recipe is not None:
        promoted, notes = importlib.import_module(f"{__package__}.quant.{level.recipe}").promotions(arch, infos)
    dtypes = {}
    for info in infos:
        dtype, note = stored_dtype(arch, info, promoted.get(info.name, level.weights))
        dtypes[info.name] = dtype
        if note:
            notes.append(note)
    return dtypes, notes


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
    source: ModelSource,
    plan: list[TensorEntry],
    quant: str,
    notes: list[str],
    manifest: dict[str, Any] | None,
) -> dict[str, Any]:
    config = source.config
    arch: Architecture = source.arch
    meta: dict[str, Any] = typed_keys(arch)
    counts: dict[str, int] = {}
    for entry in plan:
        counts[entry.dtype.name] = counts.get(entry.dtype.name, 0) + 1
    meta.update(
        {
            "name": (manifest or {}).get("repo") or source.path.stem,
            "param_count": sum(math.prod(e.shape) for e in plan),
            "original_format": source.format,
            "source": (manifest or {}).get("repo") or source.path.name,
            "hf_config": config,
            "tied_embeddings": arch.hp.tied_embeddings,
            "quantization": quantization_info(quant, QUANT_LEVELS[quant].weights.name, counts),
            "provenance": provenance_of(source, manifest),
            "converter": converter_info(),
            "conversion_notes": notes,
        }
    )
    tok_cfg = source.tokenizer_config or {}
    if tok_cfg.get("chat_template"):
        meta["chat_template"] = tok_cfg["chat_template"]
    pooling = getattr(source, "pooling_config", None)  # sentence-transformers folders only
    if pooling:
        meta["pooling"] = pooling
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

    started = time.perf_counter()
    try:
        source = open_source(source_path, allow_pickle=allow_pickle)
    except UnsupportedArchitecture as exc:  # refused before anything is written, not green until run time
        raise UnsupportedArchitecture(f"gate C0 (architecture supported) failed: {exc}") from None
    try:
        infos = list(source.tensors())
        dtypes, dtype_notes = stored_dtypes(source.arch, infos, quant)
        notes = list(source.notes) + dtype_notes
        plan = [TensorEntry(info.name, dtypes[info.name], tuple(info.shape)) for info in infos]
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
