"""The compiled block quantizers of kernels.c, built on first use with the system C compiler.

The K-quant searches make thousands of float32 operations per weight; numpy runs them as hundreds
of whole-array passes (tens of MB/s), a C loop runs them in registers (hundreds of MB/s). Both
produce llama.cpp's bytes. The library is compiled once per source version into a cache folder
($APR_QA_NATIVE_CACHE, else $XDG_CACHE_HOME/apr-qa or ~/.cache/apr-qa) and must reproduce the
numpy ports on edge-case blocks before it is used. Without a compiler, or with
APR_QA_NATIVE_QUANT=0, the numpy ports run instead: same bytes, slower.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from .. import native_build

SOURCE = Path(__file__).with_name("kernels.c")
DISABLE_ENV = "APR_QA_NATIVE_QUANT"
# -ffp-contract=off: no fused multiply-add, each product rounded as in ggml's reference build.
# -fno-math-errno only lets sqrtf compile to one instruction; it stays correctly rounded.
FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno"]
# The kernels' vectors follow the build target: -march=native doubles their speed on AVX2 CPUs.
# The library is then specific to this CPU, so the cache key includes the CPU's feature flags.
KERNELS = ("q4_0_quantize", "q4_k_quantize", "q6_k_quantize")


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name in KERNELS:
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return lib


# name -> (its numpy port's module in this package, block elements, block bytes)
_PORTS = {"q4_0": ("q4_0", 32, 18), "q4_k": ("q4_k", 256, 144), "q6_k": ("q6_k", 256, 210)}


def _self_check(lib: ctypes.CDLL, name: str) -> str | None:
    """None if kernel `name` reproduces its numpy port on edge-case blocks, else what differs. Each kernel
    is checked on its first use, against its own port only: a process that quantizes q4_0 loads no
    other quantizer's code (its code record, apr_qa.workflow.fingerprint, stays the q4_0 codec's)."""
    module_name, elems, nbytes = _PORTS[name]
    module = importlib.import_module(f".{module_name}", __package__)
    x = probe_blocks().reshape(-1, elems)
    ours = np.empty((x.shape[0], nbytes), np.uint8)
    ref = np.empty_like(ours)
    getattr(lib, f"{name}_quantize")(x.ctypes.data, ours.ctypes.data, x.shape[0])
    module.quantize_blocks_numpy(x, ref)
    if not np.array_equal(ours, ref):
        return f"{name}: {int((ours != ref).any(axis=1).sum())} of {x.shape[0]} blocks differ"
    return None


def probe_blocks() -> np.ndarray:
    """Eight 256-value rows of typical and edge-case weights (deterministic)."""
    rng = np.random.default_rng(7)
    rows = [
        rng.standard_normal(256) * 0.02,
        rng.standard_t(2, 256) * 0.05,
        np.abs(rng.standard_normal(256)),
        -rng.uniform(3, 4, 256),
        np.repeat([0.0, 0.75, -1.5, 1e-3, 0.0, 1e-7, 2.0, 0.0], 32),
        rng.standard_normal(256) * np.repeat(10.0 ** np.arange(-3, 5), 32),
        rng.integers(-8, 8, 256).astype(np.float64),
        np.tile([1.0, -1.0, 0.5, -0.5], 64),
    ]
    return np.stack(rows).astype(np.float32)


_LOCK = threading.Lock()


def library(*names: str) -> ctypes.CDLL | None:
    """The compiled kernels with the named ones (all without names) checked against their numpy ports,
    or None (numpy ports) with a warning saying why; built once, each kernel checked once."""
    with _LOCK:  # quantizer threads arrive together on first use
        lib = _library()
        return lib if lib is not None and all(_checked(lib, name) for name in names or _PORTS) else None


@functools.cache
def _checked(lib: ctypes.CDLL, name: str) -> bool:
    problem = _self_check(lib, name)
    if problem:
        warnings.warn(f"compiled quantizer disagrees with its numpy port ({problem}): using the numpy port",
                      RuntimeWarning, stacklevel=4)
    return problem is None


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    return native_build.load(SOURCE, FLAGS, "quant-kernels", ("-lm",), _bind, "quantizing with the slower numpy ports")


def run(name: str, blocks: np.ndarray, out: np.ndarray) -> bool:
    """Quantize (n, block_elems) float32 `blocks` into (n, block_bytes) `out` with kernel `name`.

    False (nothing written) when the compiled kernels are unavailable or disabled."""
    if os.environ.get(DISABLE_ENV) == "0":
        return False
    lib = library(name)
    if lib is None:
        return False
    src = np.ascontiguousarray(blocks, dtype=np.float32)
    if out.flags.c_contiguous:
        getattr(lib, f"{name}_quantize")(src.ctypes.data, out.ctypes.data, src.shape[0])
    else:
        dst = np.empty(out.shape, np.uint8)
        getattr(lib, f"{name}_quantize")(src.ctypes.data, dst.ctypes.data, src.shape[0])
        out[...] = dst
    return True
