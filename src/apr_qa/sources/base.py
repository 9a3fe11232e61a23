"""The interface every weight source implements (SafeTensors, GGUF, PyTorch, and .apr itself).

A source presents tensors under HuggingFace names, in HuggingFace row-major layout, so that the
converter, the validation gates and the runtime can treat every format alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..dtypes import DType

if TYPE_CHECKING:
    from ..arch.base import Architecture


@dataclass(frozen=True)
class TensorInfo:
    name: str                 # HuggingFace name, e.g. "model.layers.0.self_attn.q_proj.weight"
    shape: tuple[int, ...]    # row-major logical shape, e.g. (out_features, in_features)
    dtype: str                # the source's own dtype name: "F32", "BF16", "Q4_1", "Q6_K", ...


@dataclass
class RawTensor:
    """A tensor's stored payload in a dtype the .apr container can hold as-is (e.g. GGUF Q6_K)."""

    dtype: DType
    data: np.ndarray          # uint8 (block types) or the numpy dtype matching `dtype`
    shape: tuple[int, ...]


@runtime_checkable
class WeightSource(Protocol):
    format: str                    # "safetensors" | "gguf" | "pytorch" | "apr"
    path: Path                     # what the user named (folder or file)
    files: list[Path]              # every file read, for provenance hashing
    config: dict[str, Any]         # HF config.json dict (synthesized from GGUF keys for GGUF)
    tokenizer_json: str | None     # HF `tokenizers` JSON (rebuilt from GGUF metadata for GGUF)
    tokenizer_config: dict[str, Any]  # bos/eos tokens, chat_template, ... ({} if absent)
    notes: list[str]               # conversion notes, e.g. "Q4_1 dequantized to F32"

    def tensors(self) -> list[TensorInfo]:
        """All tensors, in a stable order."""

    def load(self, name: str) -> np.ndarray:
        """The tensor as float32 in HF layout. Memory: only this tensor."""

    def load_raw(self, name: str) -> RawTensor | None:
        """The stored payload when it is in a dtype .apr can hold unchanged, else None."""

    def close(self) -> None: ...


class ModelSource(WeightSource, Protocol):
    """A source in its architecture's canonical layout: what `open_source` returns."""

    arch: Architecture


@dataclass
class SourceSummary:
    """What validation needs to know about a source without reloading it."""

    format: str
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def param_count(self) -> int:
        import math

        return sum(math.prod(t.shape) for t in self.tensors.values())
