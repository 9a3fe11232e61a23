"""A checkpoint seen through its architecture: canonical names and layouts, parameters only.

HF checkpoints mostly store what the rest of the stack wants, but not always: GPT-2 keeps its
linear weights transposed (Conv1D), old BERT exports spell LayerNorm parameters gamma/beta, and
checkpoints carry buffers (position ids, attention masks) that are not weights. The architecture
says how to fix each; this wrapper applies it, so convert, validate and the runtime only ever see
the canonical tensor table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arch import Architecture, architecture_for
from .base import RawTensor, TensorInfo, WeightSource

# Integer tensors in checkpoints are buffers (e.g. BERT's position_ids = arange), not parameters.
BUFFER_DTYPES = {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"}


class CanonicalSource:
    def __init__(self, raw: WeightSource, arch: Architecture | None = None):
        self.raw = raw
        self.format, self.path, self.files = raw.format, raw.path, raw.files
        self.config, self.tokenizer_json, self.tokenizer_config = raw.config, raw.tokenizer_json, raw.tokenizer_config
        self.pooling_config = getattr(raw, "pooling_config", None)
        self.notes = list(raw.notes)
        self.arch = arch or architecture_for(raw.config, raw.path)
        self._infos: list[TensorInfo] = []
        self._raw_name: dict[str, str] = {}
        skipped = []
        for info in raw.tensors():
            if info.dtype.upper() in BUFFER_DTYPES or self.arch.dropped(info.name):
                skipped.append(info.name)
                continue
            name = self.arch.rename(info.name)
            self._raw_name[name] = info.name
            self._infos.append(TensorInfo(name, tuple(self.arch.canonical_shape(name, tuple(info.shape))), info.dtype))
        if skipped:
            self.notes.append(f"buffers not stored (not parameters): {', '.join(skipped)}")

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.arch.to_canonical(name, self.raw.load(self._raw_name[name])))

    def load_raw(self, name: str) -> RawTensor | None:
        raw = self.raw.load_raw(self._raw_name[name])
        if raw is None:
            return None
        shape = tuple(self.arch.canonical_shape(name, raw.shape))
        data = self.arch.to_canonical(name, raw.data)
        if data is raw.data and shape == tuple(raw.shape):  # nothing to change (a square Conv1D still is)
            return raw
        if raw.dtype.is_quantized:  # blocks cannot be transposed: re-encode from float
            return None
        return RawTensor(raw.dtype, np.ascontiguousarray(data), shape)

    def close(self) -> None:
        self.raw.close()

    def __getattr__(self, name: str) -> Any:  # format-specific extras (e.g. GGUF metadata)
        return getattr(self.raw, name)
