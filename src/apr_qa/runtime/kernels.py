"""Which kernel multiplies a weight: the choice between the packed runtime's kernel objects
(packed.py), the compiled kernels (native.py: matmul.c) and torch's int4 kernel (torch_int4.py).

Kept apart from packed.py, which defines the kernel objects, so that the modules implementing kernels
import packed.py and nothing imports back.
"""

from __future__ import annotations

import os

import torch

from .native import library
from .packed import KERNEL_ENV, BlockMatrix, DequantLinear, FloatLinear, NativeLinear, RowStack


def prepare_linear(weight, device: torch.device):
    """A weight the runtime multiplies by, in the form it runs: float tensors as they are, blocks
    into a kernel object on `device`."""
    if isinstance(weight, RowStack):
        return RowStack([prepare_linear(p, device) for p in weight.parts])
    if not isinstance(weight, BlockMatrix):
        return weight
    if device.type == "cpu":
        if os.environ.get(KERNEL_ENV) == "torch-int4":
            from .torch_int4 import INT4_DTYPES, Int4Linear, int4_kernel_available

            if weight.block in INT4_DTYPES and int4_kernel_available():
                return Int4Linear(weight)
        lib = library()
        if lib is not None:
            return NativeLinear(weight, lib)
    return DequantLinear(weight.to(device))


def float_linear(weight):
    """`FloatLinear` for a CPU float32/bfloat16 weight when matmul.c is built, else None."""
    lib = library() if FloatLinear.fits(weight) else None
    return FloatLinear(weight, lib) if lib is not None else None
