"""Write a .apr model as a GGUF file llama.cpp loads.

The .apr keeps every tensor under its HF name in canonical layout ([out, in] rows, GGML's byte order
for blocks), so the export is mostly renaming: the architecture registry gives each tensor's GGUF
name, the row permutation llama.cpp's converter applies (llama's Q/K interleave, Falcon's QKV
regroup; whole rows move, so blocks are copied unchanged), the `{arch}.*` metadata and derived
tensors; the tokenizer keys are rebuilt from the embedded tokenizer.json.

What GGUF cannot hold is re-encoded, never dropped silently, and reported in the result's notes:
- a block-quantized row whose length is not a whole number of blocks: the .apr pads K-quant rows to
  whole 256-value super-blocks, GGUF requires whole blocks. Such a tensor is dequantized (dropping
  the padding) and stored as Q8_0 by default, or F16 when its rows are not whole 32-value blocks
  either. Q8_0 is the closest block type to the padded values: on SmolLM2 (rows of 576) it moves the
  q4_k logits by about 1.2% of their range, a sixth of what Q4_K itself moves them from f32;
  `reencode="f16"` keeps them within 0.07% at 1.8 times the file size. llama.cpp's own quantizer
  would pick Q5_0 for Q4_K misfits and Q8_0 for Q6_K ones.
- a 1-D tensor stored in another dtype: llama.cpp's converter always writes 1-D tensors as F32.

Streaming: tensor infos are declared first, then each tensor is read, reordered and written in turn,
so peak memory is one tensor. The output appears only complete (written beside it, then renamed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..apr import AprReader
from ..arch import Architecture, architecture_for, families
from ..dtypes import QUANT_LEVELS, DType
from ..errors import AprQaError, FormatError, UnsupportedError
from ..fsutil import atomic_path
from .tokenizer import write_tokenizer

# sentence-transformers Pooling flags -> gguf.PoolingType names (BertModel._try_set_pooling_type)
_POOLING = (("pooling_mode_mean_tokens", "MEAN"), ("pooling_mode_cls_token", "CLS"), ("pooling_mode_lasttoken", "LAST"))


@dataclass
class ExportResult:
    output: Path
    architecture: str                      # general.architecture
    tensor_count: int
    dtype_counts: dict[str, int]           # GGML type name -> tensors written in it
    reencoded: dict[str, str] = field(default_factory=dict)  # tensor -> "Q4_K -> Q8_0"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(eq=False)
class _Planned:
    gguf_name: str
    shape: tuple[int, ...]
    target: Any                            # gguf.GGMLQuantizationType
    name: str | None = None                # .apr tensor (None: derived, `values` holds it)
    stored: DType | None = None
    order: np.ndarray | None = None        # canonical row r goes to GGUF row order[r]
    values: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[self.target]
        return math.prod(self.shape[:-1]) * (self.shape[-1] // block) * size


REENCODE_TYPES = ("q8_0", "f16")


def export_gguf(apr_path: str | Path, out_path: str | Path, reencode: str = "q8_0") -> ExportResult:
    """Write `apr_path` as the GGUF `out_path` (see the module docstring). `reencode`: the type
    ("q8_0" or "f16") for block-quantized tensors whose padded rows GGUF cannot hold."""
    import gguf

    if reencode not in REENCODE_TYPES:
        raise AprQaError(f"unknown re-encoding type {reencode!r} (choose from {', '.join(REENCODE_TYPES)})")
    started = time.perf_counter()
    apr_path, out_path = Path(apr_path), Path(out_path)
    if out_path.exists() and out_path.resolve() == apr_path.resolve():
        raise AprQaError("the output would overwrite the input", out_path)
    with AprReader(apr_path, verify=True) as reader:
        arch = architecture_for(reader.config, apr_path)
        gguf_arch = arch.gguf_name_of_arch()
        if gguf_arch is None:
            with_gguf = sorted(f.family for f in families() if f.gguf_arch)
            raise UnsupportedError(f"{arch.family} has no llama.cpp GGUF architecture (exportable: "
                                   f"{', '.join(with_gguf)})", apr_path)
        # a form llama.cpp cannot run is refused here, before anything is planned or written
        writer = gguf.GGUFWriter(None, gguf_arch)
        try:
            notes = arch.write_gguf_metadata(writer)
        except AprQaError as exc:
            raise exc if exc.path else type(exc)(str(exc), apr_path) from None
        plan, reencoded, plan_notes = _plan(arch, reader, reencode)
        notes = plan_notes + notes + _write_metadata(writer, arch, reader, plan)
        for t in plan:
            writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.target)
        try:
            with atomic_path(out_path) as tmp:
                try:
                    writer.write_header_to_file(path=tmp)
                    writer.write_kv_data_to_file()
                    writer.write_ti_data_to_file()
                    for t in plan:
                        writer.write_tensor_data(_payload(reader, t))
                finally:
                    writer.close()
        except OSError as exc:
            raise AprQaError(f"cannot write the GGUF: {exc.strerror or exc}", out_path) from None
    counts: dict[str, int] = {}
    for t in plan:
        counts[t.target.name] = counts.get(t.target.name, 0) + 1
    return ExportResult(out_path, gguf_arch, len(plan), counts, reencoded, notes,
                        time.perf_counter() - started)


def _plan(arch: Architecture, reader: AprReader, reencode: str) -> tuple[list[_Planned], dict[str, str], list[str]]:
    """Every tensor's GGUF name, shape, type and row order, before anything is written."""
    import gguf

    GT = gguf.GGMLQuantizationType
    wanted = arch.tensors()
    entries = {e.name: e for e in reader.entries}
    if missing := [n for n in wanted if n not in entries]:
        raise FormatError(f"tensor {missing[0]!r} is missing ({len(missing)} of the {arch.family} tensors)",
                          reader.path)
    plan, reencoded, skipped, widened = [], {}, [], []
    for name in [*wanted, *(n for n in entries if n not in wanted)]:
        entry = entries[name]
        gguf_name = arch.gguf_name(name)
        if name not in wanted and (gguf_name is None or arch.optional(name)):
            skipped.append(name)  # poolers, MLM heads, a tied head stored anyway: neither read nor converted
            continue
        if gguf_name is None:
            raise UnsupportedError(f"tensor {name!r} has no GGUF {arch.gguf_name_of_arch()} name", reader.path)
        shape, stored = tuple(entry.shape), entry.dtype
        if len(shape) == 1:
            target = GT.F32
            if stored.is_quantized:
                widened.append(name)
        elif stored.is_quantized and shape[-1] % stored.block_elems:
            target = GT.Q8_0 if reencode == "q8_0" and shape[-1] % DType.Q8_0.block_elems == 0 else GT.F16
            reencoded[name] = f"{stored.name} -> {target.name}"
        else:
            target = GT[stored.name]
        order = arch.gguf_row_order(name, shape)
        plan.append(_Planned(gguf_name, shape, target, name, stored, order))
    for gguf_name, values in arch.gguf_extra_tensors().items():
        plan.append(_Planned(gguf_name, values.shape, GT.F32, values=values))
    notes = []
    if reencoded:
        notes.append(_reencoding_note(reencoded, {name: entries[name].shape[-1] for name in reencoded}))
    if widened:
        notes.append(f"{len(widened)} block-quantized 1-D tensors written as F32 (llama.cpp reads 1-D tensors as "
                     f"F32): {', '.join(widened)}")
    if skipped:
        notes.append(f"not exported (the runtime does not read them; llama.cpp's converter drops them): "
                     f"{', '.join(skipped)}")
    return plan, reencoded, notes


def _reencoding_note(reencoded: dict[str, str], cols: dict[str, int]) -> str:
    kinds: dict[str, int] = {}
    for change in reencoded.values():
        kinds[change] = kinds.get(change, 0) + 1
    lengths = sorted(set(cols.values()))
    return (f"{len(reencoded)} tensors re-encoded ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}): "
            f"their rows of {', '.join(map(str, lengths))} values are padded to whole blocks in the .apr, which "
            "GGUF cannot hold")


def _write_metadata(writer: Any, arch: Architecture, reader: AprReader, plan: list[_Planned]) -> list[str]:
    """general.*, the pooling type, and the tokenizer keys (the family's keys are already written)."""
    import gguf

    meta = reader.metadata
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(str(meta.get("name") or reader.path.stem))
    notes: list[str] = []
    pooling = reader.pooling_config or {}
    for flag, kind in _POOLING:
        if pooling.get(flag):
            writer.add_pooling_type(gguf.PoolingType[kind])
            break
    level = (meta.get("quantization") or {}).get("level")
    if level in QUANT_LEVELS:  # general.file_type: the level's gguf.LlamaFileType
        writer.add_file_type(gguf.LlamaFileType[QUANT_LEVELS[level].gguf_file_type])
    if any(t.target not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                            gguf.GGMLQuantizationType.BF16) for t in plan):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    try:
        notes += write_tokenizer(writer, reader.tokenizer_json, reader.tokenizer_config, reader.config,
                                 arch.hp.vocab_size)
    except AprQaError as exc:
        raise type(exc)(f"tokenizer: {exc}", reader.path) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"the embedded tokenizer cannot be written as GGUF: {type(exc).__name__}: {exc}",
                          reader.path) from None
    return notes


def _payload(reader: AprReader, t: _Planned) -> np.ndarray:
    """The tensor's GGUF bytes: rows in GGUF order, in the planned type."""
    import gguf

    if t.values is not None:
        return np.ascontiguousarray(t.values, dtype=np.float32)
    assert t.name is not None and t.stored is not None  # a tensor of the .apr when it is not derived
    rows = math.prod(t.shape[:-1])
    if t.target.name == t.stored.name:  # copied as stored: blocks and floats unchanged
        raw = reader.raw(t.name)
        if t.stored.is_quantized:
            data = raw.reshape(rows, -1)
        else:
            data = raw.view({DType.F32: np.float32, DType.F16: np.float16, DType.BF16: np.uint16}[t.stored])
            data = data.reshape(t.shape)
    else:
        values = reader.load(t.name)
        if t.target == gguf.GGMLQuantizationType.Q8_0:
            # gguf-py's numpy Q8_0 is ggml's reference rounding, byte for byte (as apr_qa.quant's), and
            # several times faster on these whole-tensor calls
            data = gguf.quants.quantize(values, t.target).reshape(rows, -1)
        else:
            data = values.astype(np.float16 if t.target == gguf.GGMLQuantizationType.F16 else np.float32)
    if t.order is not None:
        data = data[np.argsort(t.order, kind="stable")]  # canonical row r lands on GGUF row order[r]
    return np.ascontiguousarray(data)
