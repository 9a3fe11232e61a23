"""Record llama.cpp's own quantizer output as a golden fixture for tests/test_q4k_llamacpp.py.

Runs in a throwaway venv that has llama-cpp-python (which bundles libggml), not in the project
venv:

    python3 -m venv .venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv-llamacpp/bin/pip install llama-cpp-python numpy
    .venv-llamacpp/bin/python scripts/make_q4k_golden.py [--lib path/to/libggml-base.so]

It calls `ggml_quantize_chunk` (the function llama.cpp's model quantizer calls for every tensor;
without an importance matrix it runs the `quantize_row_*_ref` reference code) through ctypes on a
set of deterministic rows chosen to hit the quantizers' edge cases, and saves the inputs, the
bytes for Q4_K, Q8_0, Q4_0 and Q6_K, and llama.cpp's dequantization of the Q4_K and Q6_K bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "q4k_llamacpp_golden.npz"

# ggml_type values and (block elements, block bytes), from ggml.h / ggml-common.h.
GGML_TYPES = {"q4_0": (2, 32, 18), "q8_0": (8, 32, 34), "q4_k": (12, 256, 144), "q6_k": (14, 256, 210)}


def load_ggml(path: str | Path | None = None) -> ctypes.CDLL:
    """libggml-base at `path`, or the one bundled in the installed llama_cpp package."""
    if path is None:
        import llama_cpp

        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    else:
        candidates = [Path(path)]
    for candidate in candidates:
        lib = ctypes.CDLL(str(candidate))
        if hasattr(lib, "ggml_quantize_chunk"):
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [
                ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
            ]
            lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
            lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
            for name in ("ggml_version", "ggml_commit"):
                if hasattr(lib, name):
                    getattr(lib, name).restype = ctypes.c_char_p
            return lib
    raise ImportError(f"no libggml exporting ggml_quantize_chunk among {[str(c) for c in candidates]}")


def ggml_build(lib: ctypes.CDLL) -> str:
    parts = [getattr(lib, n)().decode() for n in ("ggml_version", "ggml_commit") if hasattr(lib, n)]
    return "ggml " + " ".join(parts) if parts else "ggml (unknown version)"


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml.h): only the leading fields we use.
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)),
    ]


def ggml_quantize(lib: ctypes.CDLL, name: str, x: np.ndarray) -> np.ndarray:
    """llama.cpp's bytes for float32 rows x (n_rows, n_per_row); n_per_row must fill whole blocks."""
    code, block, size = GGML_TYPES[name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    assert cols % block == 0, (name, cols)
    out = np.zeros(rows * cols // block * size, np.uint8)
    written = lib.ggml_quantize_chunk(code, x.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    assert written == out.size, (name, written, out.size)
    return out


def ggml_dequantize(lib: ctypes.CDLL, name: str, raw: np.ndarray, n: int) -> np.ndarray:
    code = GGML_TYPES[name][0]
    traits = lib.ggml_get_type_traits(code).contents
    assert traits.blck_size == GGML_TYPES[name][1] and traits.type_size == GGML_TYPES[name][2]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty(n, np.float32)
    traits.to_float(raw.ctypes.data, out.ctypes.data, n)
    return out


def golden_inputs(seed: int = 20240917) -> np.ndarray:
    """40 rows x 256: typical weights plus every edge case of the block quantizers."""
    rng = np.random.default_rng(seed)
    normal = lambda scale: rng.standard_normal(256) * scale  # noqa: E731
    rows = [normal(0.02) for _ in range(8)]
    rows += [normal(1.0), normal(50.0), rng.standard_t(2, 256) * 0.05, rng.standard_t(1, 256)]
    rows += [rng.uniform(0, 1, 256), rng.uniform(-1, 0, 256), rng.uniform(3, 4, 256), -rng.uniform(3, 4, 256)]
    rows += [np.zeros(256), np.full(256, 0.75), np.full(256, -1.5), np.full(256, 1e-3)]
    with_zero_blocks = normal(0.1)
    with_zero_blocks[32:96] = 0.0
    rows.append(with_zero_blocks)
    one_hot = np.zeros(256)
    one_hot[[5, 77, 200]] = [3.0, -2.0, 0.5]
    rows.append(one_hot)
    ties = np.tile([1.0, -1.0, 0.5, -0.5], 64) * np.repeat(rng.uniform(0.1, 2, 8), 32)  # +a/-a ties
    rows.append(ties)
    rows.append(-ties)
    halves = rng.integers(-254, 255, 256) / 2.0  # exact .5 quotients: roundf's tie rule
    halves[::32] = 127.0
    rows.append(halves)
    rows.append(rng.integers(-16, 16, 256) * 0.125)
    rows += [normal(1e-6), normal(3e-5), normal(1e-9), normal(1e4), normal(3e5)]  # f16 subnormal / overflow
    mixed = normal(0.02)
    mixed[::37] *= 300.0  # outliers dominate their sub-block
    rows.append(mixed)
    rows.append(np.abs(normal(0.02)))
    rows.append(np.where(rng.random(256) < 0.5, 0.0, normal(0.05)))
    rows += [normal(0.02) + 0.05, normal(0.02) - 0.05]
    rows.append(normal(1.0) * np.repeat(10.0 ** np.arange(-3, 5), 32))  # sub-block scales 1e-3..1e4
    rows.append(normal(1.0) * np.repeat([1.0, 1e-7, 1.0, 0.0, 1.0, 1e-5, 2.0, 1.0], 32))
    rows.append(rng.integers(-8, 8, 256).astype(np.float64))  # integer levels: rounding ties
    minus_zero = np.zeros(256)
    minus_zero[0] = -0.0  # all-zero blocks: ggml stores d = -0.0 whatever the first element's sign
    minus_zero[64:] = normal(0.02)[64:]
    rows.append(minus_zero)
    x = np.stack(rows).astype(np.float32)
    assert x.shape == (40, 256), x.shape
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", help="libggml-base shared library (default: the one in llama_cpp)")
    args = ap.parse_args()
    lib = load_ggml(args.lib)
    x = golden_inputs()
    record = {"inputs": x}
    for name in GGML_TYPES:
        record[name] = ggml_quantize(lib, name, x)
    record["q4_k_dequant"] = ggml_dequantize(lib, "q4_k", record["q4_k"], x.size).reshape(x.shape)
    record["q6_k_dequant"] = ggml_dequantize(lib, "q6_k", record["q6_k"], x.size).reshape(x.shape)
    record["ggml_build"] = np.array(ggml_build(lib))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **record)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {record['ggml_build']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
