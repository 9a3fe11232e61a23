"""GGUF files, presented under canonical (HF) names in canonical layout.

The architecture registry says everything family-specific: which family a GGUF architecture is,
the HF config its metadata stands for, the GGUF name of each tensor (gguf-py's TensorNameMap),
and the row order llama.cpp's converter applied (llama's Q/K permutation, Falcon's QKV regroup).
What is left here is common to all:
- dims are stored in GGML order (ne0 first): the canonical shape is the reversed dims, the bytes
  are already row-major [out, in] and are never transposed;
- a row reorder moves whole rows, so quantized blocks are reordered as they are.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf import GGUFReader
from gguf.quants import dequantize

from ..arch import family_for_gguf
from ..dtypes import DType
from ..errors import AprQaError, FormatError, UnsupportedError
from .base import RawTensor, TensorInfo
from .gguf_check import check_gguf_layout
from .gguf_tokenizer import build_tokenizer, library_failure

# GGUF payloads .apr can hold unchanged; everything else is dequantized to F32 by the caller.
_RAW = {GT.F32: DType.F32, GT.F16: DType.F16, GT.BF16: DType.BF16, GT.Q8_0: DType.Q8_0,
        GT.Q4_0: DType.Q4_0, GT.Q4_K: DType.Q4_K, GT.Q6_K: DType.Q6_K}
# Tensors llama.cpp derives at conversion time that have no HF counterpart.
_DERIVED = {"rope_freqs.weight"}
# `{arch}.pooling_type` (gguf.PoolingType, from the sentence-transformers Pooling module at
# conversion) -> the 1_Pooling/config.json flag it came from.
_POOLING_FLAGS = {1: "pooling_mode_mean_tokens", 2: "pooling_mode_cls_token", 3: "pooling_mode_lasttoken"}


def _pooling_config(meta: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """The sentence-transformers Pooling config a GGUF's pooling type stands for (None: not recorded)."""
    pooling = meta.get(f"{meta.get('general.architecture')}.pooling_type")
    flag = _POOLING_FLAGS.get(pooling) if isinstance(pooling, int) else None
    if flag is None:
        return None
    return {"word_embedding_dimension": config.get("hidden_size"),
            **{f: f == flag for f in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                                      "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_lasttoken")}}


def _rope_factors(tensor: Any, path: Path) -> list[float]:
    """The values of llama.cpp's `rope_freqs` tensor (one divisor per rotary frequency)."""
    if tensor.tensor_type != GT.F32 or tensor.n_elements > 4096:
        raise FormatError(f"rope_freqs is {tensor.tensor_type.name} x {tensor.n_elements}, expected a short F32 vector",
                          path)
    values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if not np.isfinite(values).all() or (values <= 0).any():
        raise FormatError("rope_freqs holds non-positive or non-finite factors", path)
    return values.tolist()


class GGUFSource:
    format = "gguf"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = [self.path]
        self.notes: list[str] = []
        self.pooling_config = None
        self.tokenizer_json: str | None
        self.tokenizer_config: dict[str, Any]
        check_gguf_layout(self.path)  # every count and extent bounded before gguf-py trusts them
        try:
            reader = GGUFReader(self.path, "r")
            meta = {k: f.contents() for k, f in reader.fields.items()}
        except Exception as e:  # gguf-py raises ValueError/IndexError/KeyError on damaged files
            raise FormatError(f"not a readable GGUF file: {type(e).__name__}: {e}", self.path) from None
        self._reader: GGUFReader | None = reader
        self._meta = meta
        family = family_for_gguf(meta.get("general.architecture"), self.path)
        gguf_tensors = {t.name: t for t in reader.tensors}
        if "rope_freqs.weight" in gguf_tensors:  # llama3 scaling as llama.cpp stores it: per-pair factors
            meta = {**meta, "rope_freqs.weight": _rope_factors(gguf_tensors["rope_freqs.weight"], self.path)}
        try:
            self.config = family.config_from_gguf(meta, set(gguf_tensors))
        except AprQaError as e:
            raise type(e)(str(e), self.path) from None
        except (LookupError, TypeError, ValueError, ArithmeticError, AttributeError) as e:  # a key of a wrong type
            raise FormatError(f"GGUF metadata does not describe a {family.family} model: {type(e).__name__}: {e}",
                              self.path) from None
        self.arch = family(self.config, self.path)
        self.pooling_config = _pooling_config(meta, self.config)
        names = self.arch.gguf_to_canonical_names()

        size = self.path.stat().st_size
        self._tensors: dict[str, Any] = {}
        self._infos: list[TensorInfo] = []
        self._row_order: dict[str, np.ndarray] = {}
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise FormatError(f"tensor {t.name!r} extends past the end of the file", self.path)
            name = names.get(t.name)
            if name is None:
                if t.name in _DERIVED:
                    self.notes.append(f"GGUF tensor {t.name} (derived by llama.cpp, not an HF weight) "
                                      "read into the config")
                    continue
                raise UnsupportedError(f"GGUF tensor {t.name!r} has no {self.arch.family} equivalent", self.path)
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            try:
                order = self.arch.gguf_row_order(name, shape)
            except (AprQaError, ValueError) as e:  # rows that do not split into the config's heads
                raise FormatError(f"tensor {t.name!r}: {e}", self.path) from None
            if order is not None:
                self._row_order[name] = order
            self._tensors[name] = t
            self._infos.append(TensorInfo(name, shape, t.tensor_type.name))

        for qtype in sorted({t.tensor_type for t in self._tensors.values()} - set(_RAW), key=lambda q: q.name):
            self.notes.append(f"{qtype.name} tensors dequantized to F32 (no portable .apr code)")
        if meta.get("tokenizer.ggml.tokens"):
            try:
                self.tokenizer_json, self.tokenizer_config = build_tokenizer(meta, self.notes)
            except AprQaError as e:
                raise type(e)(str(e), self.path) from None
            except BaseException as e:
                if not library_failure(e):
                    raise
                # damaged arrays: merges of tokens not in the vocabulary, ids of the wrong type, ...
                raise FormatError(f"GGUF tokenizer metadata is damaged: {type(e).__name__}: {e}", self.path) from None
        else:
            self.notes.append("GGUF carries no tokenizer")
            self.tokenizer_json, self.tokenizer_config = None, {}

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def _rows(self, name: str, data: np.ndarray) -> np.ndarray:
        order = self._row_order.get(name)
        return np.take(data, order, axis=0) if order is not None else np.array(data)

    def load(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        try:
            values = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise UnsupportedError(f"tensor {t.name!r}: cannot dequantize {t.tensor_type.name}", self.path) from None
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out = self._rows(name, values.reshape(shape)).astype(np.float32, copy=False)
        self._release_pages()
        return out

    def load_raw(self, name: str) -> RawTensor | None:
        t = self._tensors[name]
        dtype = _RAW.get(t.tensor_type)
        if dtype is None:
            return None
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if dtype is DType.BF16:
            data = t.data.view(np.uint16).reshape(shape)
        elif dtype.is_quantized:
            # uint8 blocks, one row of the [out, in] matrix per leading index
            data = t.data.reshape(*shape[:-1], dtype.row_bytes(shape[-1]))
        else:
            data = t.data.reshape(shape)
        out = RawTensor(dtype, self._rows(name, data), shape)  # _rows copies out of the map
        self._release_pages()
        return out

    def _release_pages(self) -> None:
        """Drop the mapped pages read so far from our RSS (they stay in the page cache), so a
        streaming conversion's peak memory follows its largest tensor, not the file size."""
        mm = getattr(getattr(self._reader, "data", None), "_mmap", None)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self._reader = None
        self._tensors = {}
