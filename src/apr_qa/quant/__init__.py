"""Quantize float32 tensors to .apr dtypes and back (GGML block layouts).

    quantize(dtype, x)            -> 1-D uint8, exactly dtype.nbytes(x.shape) bytes
    dequantize(dtype, raw, shape) -> float32 array of `shape`

Rows (the last dimension) are zero-padded to whole blocks; dequantize drops the padding.
Each dtype lives in its own self-contained module exposing quantize_blocks(blocks, out) and
dequantize_blocks(raw, out) over (n, block_elems) float32 and (n, block_bytes) uint8 arrays;
this module only pads, chunks and dispatches. Q4_0, Q4_K and Q6_K quantize with compiled kernels
(native.py) when a C compiler is available, else with their numpy ports; the bytes are the same.
The K-quants, the slow ones, quantize chunks on every CPU the process may use
($APR_QA_QUANT_THREADS overrides the count).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable

import numpy as np

from ..dtypes import DType
from ..errors import FormatError

Codec = tuple[Callable[[np.ndarray, np.ndarray], None], Callable[[np.ndarray, np.ndarray], None]]

# dtype -> (module of this package, its encode and decode functions). A module is imported on first
# use, so a process loads only the codecs of the dtypes it touches: a q4_0 conversion's code record
# (workflow/fingerprint.py) names q4_0.py, and an edit to q4_k.py does not rerun it.
_CODECS: dict[DType, tuple[str, str, str]] = {
    DType.F32: ("floats", "quantize_f32", "dequantize_f32"),
    DType.F16: ("floats", "quantize_f16", "dequantize_f16"),
    DType.BF16: ("floats", "quantize_bf16", "dequantize_bf16"),
    DType.Q8_0: ("q8_0", "quantize_blocks", "dequantize_blocks"),
    DType.Q4_0: ("q4_0", "quantize_blocks", "dequantize_blocks"),
    DType.Q4_K: ("q4_k", "quantize_blocks", "dequantize_blocks"),
    DType.Q6_K: ("q6_k", "quantize_blocks", "dequantize_blocks"),
}


@functools.cache
def codec(dtype: DType) -> Codec:
    """(encode, decode) of `dtype`, importing its module now."""
    if dtype not in _CODECS:
        raise FormatError(f"no codec for dtype {dtype.name}")
    module, encode, decode = _CODECS[dtype]
    loaded = importlib.import_module(f".{module}", __package__)
    return getattr(loaded, encode), getattr(loaded, decode)

# Elements handled per step: small enough that a step's temporaries stay in the CPU cache,
# large enough to amortize numpy's per-call overhead (the K-quants make hundreds of calls per step).
_CHUNK_ELEMS = {DType.F32: 1 << 22, DType.F16: 1 << 22, DType.BF16: 1 << 22, DType.Q8_0: 1 << 18, DType.Q4_0: 1 << 18}
_DEFAULT_CHUNK_ELEMS = 1 << 16


# Quantizers worth splitting across threads: hundreds of float operations per weight, all in
# compiled code or numpy calls that release the GIL. The others are memory-bound (measured no gain).
_THREADED = {DType.Q4_K, DType.Q6_K}
THREADS_ENV = "APR_QA_QUANT_THREADS"


def quantize_threads() -> int:
    """Threads the K-quants use: $APR_QA_QUANT_THREADS, else the CPUs this process may run on."""
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def _chunks(n_blocks: int, dtype: DType):
    step = max(1, _CHUNK_ELEMS.get(dtype, _DEFAULT_CHUNK_ELEMS) // dtype.block_elems)
    for start in range(0, n_blocks, step):
        yield slice(start, min(start + step, n_blocks))


def quantize(dtype: DType, x: np.ndarray) -> np.ndarray:
    """Encode float32 `x` (any shape, rows = last dim) as `dtype` storage bytes."""
    encode = codec(dtype)[0]
    x = np.asarray(x, dtype=np.float32)
    rows, cols = _rows_cols(x.shape)
    per_row = math.ceil(cols / dtype.block_elems)
    width = per_row * dtype.block_elems
    if width == cols:
        src = np.ascontiguousarray(x).reshape(rows * per_row, dtype.block_elems)
    else:
        padded = np.zeros((rows, width), np.float32)
        padded[:, :cols] = x.reshape(rows, cols)
        src = padded.reshape(rows * per_row, dtype.block_elems)
    out = np.empty((src.shape[0], dtype.block_bytes), np.uint8)
    parts = list(_chunks(src.shape[0], dtype))
    threads = min(quantize_threads(), len(parts)) if dtype in _THREADED else 1
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="apr-qa-quant") as pool:
            for _ in pool.map(lambda part: encode(src[part], out[part]), parts):
                pass
    else:
        for part in parts:
            encode(src[part], out[part])
    return out.reshape(-1)


def dequantize(dtype: DType, raw: np.ndarray | bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Decode `dtype` storage bytes into a float32 array of logical `shape`."""
    shape = tuple(int(s) for s in shape)
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    expected = dtype.nbytes(shape)
    if data.size != expected:
        raise FormatError(f"{dtype.name} tensor of shape {list(shape)} needs {expected} bytes, got {data.size}")
    rows, cols = _rows_cols(shape)
    per_row = math.ceil(cols / dtype.block_elems)
    blocks = data.reshape(rows * per_row, dtype.block_bytes)
    out = np.empty((rows * per_row, dtype.block_elems), np.float32)
    decode = codec(dtype)[1]
    for part in _chunks(blocks.shape[0], dtype):
        decode(blocks[part], out[part])
    out = out.reshape(rows, per_row * dtype.block_elems)
    if out.shape[1] != cols:
        out = np.ascontiguousarray(out[:, :cols])
    return out.reshape(shape)
