"""Pull tensors out of a WeightSource into torch, in the runtime dtype and device, each checked
against the shape its architecture's tensor table gives.

Two modes (`weights_mode`): "dequantized" turns every tensor into floats at load; "packed" keeps
Q8_0 / Q4_0 / Q4_K / Q6_K matrices in their blocks (`packed.BlockMatrix`), which the runtime then
multiplies with a quantized kernel (`kernels.prepare_linear`). Float tensors are floats either way.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import FormatError, UnsupportedError
from .norms import Norm
from .kernels import float_linear, prepare_linear
from .packed import PACKED_DTYPES, BlockMatrix, is_packed, stack_rows

WEIGHT_MODES = ("packed", "dequantized")
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("apr_qa_weights", default="dequantized")


@contextlib.contextmanager
def weights_mode(mode: str) -> Iterator[None]:
    """Loaders created inside the block use `mode` (architecture builders create their own)."""
    if mode not in WEIGHT_MODES:
        raise UnsupportedError(f"weights mode {mode!r} is not one of {', '.join(WEIGHT_MODES)}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


class WeightLoader:
    def __init__(self, source, device: torch.device, dtype: torch.dtype,
                 expected: dict[str, tuple[int, ...]] | None = None, packed: bool | None = None):
        self.source = source
        self.device = device
        self.dtype = dtype
        self.expected = expected or {}
        self.packed = _MODE.get() == "packed" if packed is None else packed
        infos = source.tensors()
        self.shapes = {t.name: tuple(t.shape) for t in infos}
        self.stored = {t.name: t.dtype.upper() for t in infos}

    def has(self, name: str) -> bool:
        return name in self.shapes

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor | BlockMatrix:
        """A matrix the runtime multiplies by: kept in its blocks in "packed" mode, floats otherwise."""
        self._check(name, shape)
        if self.packed and len(self.shapes[name]) == 2 and self.stored[name] in {d.name for d in PACKED_DTYPES}:
            raw = self.source.load_raw(name)
            if raw is not None and raw.dtype in PACKED_DTYPES:
                return BlockMatrix.from_raw(raw.dtype, raw.data, self.shapes[name], self.dtype, self.device)
        return self._floats(name)

    def dense(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A tensor the runtime adds or indexes (biases, norm weights, position tables): always floats."""
        self._check(name, shape)
        return self._floats(name)

    def get_optional(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """An optional bias: floats, or None when the model stores none."""
        return self.dense(name, shape) if self.has(name) else None

    def norm(self, prefix: str) -> Norm:
        """`prefix.weight` and, when stored, `prefix.bias`."""
        return Norm(self.dense(prefix + ".weight"), self.get_optional(prefix + ".bias"))

    def _check(self, name: str, shape: tuple[int, ...] | None) -> None:
        if name not in self.shapes:
            raise FormatError(f"missing tensor {name}", self.source.path)
        want = shape or self.expected.get(name)
        if want is not None and self.shapes[name] != tuple(want):
            raise FormatError(f"tensor {name} has shape {self.shapes[name]}, config implies {tuple(want)}",
                              self.source.path)

    def _floats(self, name: str) -> torch.Tensor:
        array = np.ascontiguousarray(self.source.load(name), dtype=np.float32)
        return torch.from_numpy(array).to(device=self.device, dtype=self.dtype)

    def fused(self, names: list[str], shapes: list[tuple[int, ...] | None] | None = None):
        """Concatenate along the output dim so one matmul replaces several (QKV, gate+up); blocks are
        per row, so packed weights concatenate too."""
        return stack_rows([self.get(n, s) for n, s in zip(names, shapes or [None] * len(names), strict=True)])

    def fused_optional(self, names: list[str],
                       shapes: list[tuple[int, ...] | None] | None = None) -> torch.Tensor | None:
        """Fused biases: all present, all absent (None), or a format error."""
        present = [self.has(n) for n in names]
        if not any(present):
            return None
        if not all(present):
            missing = [n for n, p in zip(names, present, strict=True) if not p]
            raise FormatError(f"bias tensors only partly present, missing {', '.join(missing)}", self.source.path)
        parts = [self.dense(n, s) for n, s in zip(names, shapes or [None] * len(names), strict=True)]
        return torch.cat(parts, dim=0).contiguous()


def linear_layout(weight, device: torch.device | None = None):
    """The same [out, in] weight, in the form that multiplies fastest. Packed blocks become their
    kernel object (`kernels.prepare_linear`); CPU float32/bfloat16 weights decode through matmul.c's
    row kernel (`packed.FloatLinear`) when it is built. Otherwise, on CPU at float32, MKL's
    matrix-vector product over an [in, out]-major buffer is ~1.5-2x faster for the wide projections
    (measured: 49152x576 lm_head 20 ms vs 37 ms per token); half types prefer [out, in]."""
    if is_packed(weight):
        return prepare_linear(weight, device or torch.device("cpu"))
    fast = float_linear(weight)
    if fast is not None:
        return fast
    if weight.dtype == torch.float32 and weight.device.type == "cpu":
        return weight.t().contiguous().t()
    return weight


__all__ = ["WEIGHT_MODES", "WeightLoader", "linear_layout", "weights_mode"]
