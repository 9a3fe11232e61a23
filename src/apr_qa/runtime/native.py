"""The compiled block matmuls of matmul.c, built on first use with the system C compiler.

torch has no CPU kernel that multiplies GGML blocks exactly (its int4 kernel is fast only with
bfloat16 activations, scales and outputs), so the packed path brings its own: a float32 dot
product over each block's integers, the scale applied per block. The library is compiled once per
source version, compiler and CPU into a cache folder ($APR_QA_NATIVE_CACHE, else
$XDG_CACHE_HOME/apr-qa or ~/.cache/apr-qa) with OpenMP (torch's runtime, already loaded), and must
reproduce ggml's dequantization bit for bit on probe blocks before it is used. Without a compiler,
or with APR_QA_NATIVE_MATMUL=0, packed weights are dequantized per matmul in torch instead: the same
values, slower.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import warnings
from pathlib import Path

import torch

from .. import native_build
from ..dtypes import DType

SOURCE = Path(__file__).with_name("matmul.c")
DISABLE_ENV = "APR_QA_NATIVE_MATMUL"
# -ffp-contract=off keeps every dequantized value ggml's (no fused multiply-add); -march=native
# vectorizes for this CPU, so the cache key includes the CPU's feature flags.
FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp", "-pthread", "-ffp-contract=off"]
TYPES = (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K)


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.blocks_matmul.argtypes = [ctypes.c_int, ptr, i64, i64, ptr, i64, ptr, ctypes.c_int]
    lib.blocks_dequantize.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr]
    lib.rms_norm_rows.argtypes = [ptr, ptr, i64, i64, ctypes.c_float, ptr]
    lib.attend_one.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ctypes.c_float, ptr]
    for fn in (lib.blocks_matmul, lib.blocks_dequantize, lib.rms_norm_rows, lib.attend_one):
        fn.restype = ctypes.c_int
    return lib


def _self_check(lib: ctypes.CDLL) -> str | None:
    """None if the library dequantizes probe blocks exactly as ggml and its products agree with
    float32 matmuls of those values, else what differs."""
    from .packed import dequantize_rows

    gen = torch.Generator().manual_seed(3)
    for dtype in TYPES:
        rows, per_row = 5, 2
        data = torch.randint(0, 256, (rows, per_row * dtype.block_bytes), dtype=torch.uint8, generator=gen)
        scale_at = {DType.Q8_0: [0], DType.Q4_0: [0], DType.Q4_K: [0, 2], DType.Q6_K: [208]}[dtype]
        blocks = data.view(rows, per_row, dtype.block_bytes)
        for offset in scale_at:  # finite, moderate half-float scales (random bits may be inf/NaN)
            blocks[..., offset:offset + 2] = torch.tensor([0x00, 0x2C], dtype=torch.uint8)  # 2**-4
        width = per_row * dtype.block_elems
        want = dequantize_rows(dtype, data, width)
        got = torch.empty(rows, width)
        lib.blocks_dequantize(dtype.code, data.data_ptr(), rows, width, width, got.data_ptr())
        if not torch.equal(got, want):
            return f"{dtype.name} dequantization differs"
        x = torch.randn(3, width, generator=gen)
        y = torch.empty(3, rows)
        lib.blocks_matmul(dtype.code, data.data_ptr(), rows, width, x.data_ptr(), 3, y.data_ptr(), 1)
        ref = x.double() @ want.double().t()
        if not torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())):
            return f"{dtype.name} matmul differs from float64 by {float((y.double() - ref).abs().max()):.3g}"
    return None


_LOCK = threading.Lock()


def library() -> ctypes.CDLL | None:
    """The checked compiled kernels, or None (dequantize per matmul) with a warning saying why."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    with _LOCK:
        return _library()


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    lib = native_build.load(SOURCE, FLAGS, "matmul", ("-lm",), _bind,
                            "packed weights are dequantized per matmul (slower)")
    problem = _self_check(lib) if lib is not None else None
    if problem:
        warnings.warn(f"compiled block matmuls disagree with ggml's arithmetic ({problem}): packed weights are "
                      "dequantized per matmul", RuntimeWarning, stacklevel=3)
        return None
    return lib
