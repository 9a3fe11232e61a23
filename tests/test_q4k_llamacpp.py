"""Our quantizers against llama.cpp's own bytes.

Always: the golden fixture recorded by scripts/make_q4k_golden.py (llama.cpp's
ggml_quantize_chunk output for 40 edge-case rows). Also live, on fresh data, when llama_cpp is
importable (it is not a dependency of the project; see the script for the throwaway venv) or
APR_QA_GGML_LIB names a libggml-base shared library.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from apr_qa.dtypes import DType
from apr_qa.quant import dequantize, q4_k, quantize

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "q4k_llamacpp_golden.npz"
TYPES = {"q4_k": DType.Q4_K, "q8_0": DType.Q8_0, "q4_0": DType.Q4_0, "q6_k": DType.Q6_K}


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _mismatch(ours: np.ndarray, ref: np.ndarray, block_bytes: int) -> str:
    bad = np.flatnonzero((ours.reshape(-1, block_bytes) != ref.reshape(-1, block_bytes)).any(axis=1))
    return f"{bad.size} of {ref.size // block_bytes} blocks differ, first {bad[:8].tolist()}"


@pytest.mark.parametrize("name", sorted(TYPES))
def test_quantize_matches_recorded_llamacpp_bytes(golden, name):
    dtype = TYPES[name]
    ours = quantize(dtype, golden["inputs"])
    ref = golden[name]
    assert np.array_equal(ours, ref), _mismatch(ours, ref, dtype.block_bytes)


def test_q4_k_exact_rounding_path_matches_recorded_bytes(golden, monkeypatch):
    # The port rounds with np.rint where that provably equals ggml's nearest_int and emulates the
    # C bit trick otherwise; force the emulation everywhere to prove it exact as well.
    monkeypatch.setenv("APR_QA_NATIVE_QUANT", "0")  # the numpy port, not the compiled kernel
    monkeypatch.setattr(q4_k, "_RINT_SAFE", np.float32(0))
    assert np.array_equal(quantize(DType.Q4_K, golden["inputs"]), golden["q4_k"])


@pytest.mark.parametrize("name", ["q4_k", "q6_k"])
def test_dequantize_matches_recorded_llamacpp_floats(golden, name):
    x = golden["inputs"]
    ours = dequantize(TYPES[name], golden[name], x.shape)
    np.testing.assert_array_equal(ours.view(np.uint32), golden[f"{name}_dequant"].view(np.uint32))


def _live_ggml():
    """The golden script's ctypes binding, on $APR_QA_GGML_LIB or llama_cpp's bundled libggml."""
    lib_path = os.environ.get("APR_QA_GGML_LIB")
    if not lib_path:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            pytest.skip(
                f"llama_cpp is not importable ({exc}) and APR_QA_GGML_LIB is unset; "
                "only the recorded golden bytes were checked"
            )
    spec = importlib.util.spec_from_file_location("make_q4k_golden", ROOT / "scripts" / "make_q4k_golden.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script, script.load_ggml(lib_path or None)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_quantize_matches_live_llamacpp(name):
    script, lib = _live_ggml()
    rng = np.random.default_rng()  # fresh data every run: the golden rows are not special-cased
    seed = int(rng.integers(2**31))
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [
            rng.standard_normal((24, 1024)) * 0.02,
            rng.standard_t(3, (8, 1024)) * rng.uniform(1e-4, 10, (8, 1)),
            np.abs(rng.standard_normal((4, 1024))),
            script.golden_inputs(seed).reshape(-1, 1024),
        ]
    ).astype(np.float32)
    ours = quantize(TYPES[name], x)
    ref = script.ggml_quantize(lib, name, x)
    assert np.array_equal(ours, ref), f"seed {seed}: " + _mismatch(ours, ref, TYPES[name].block_bytes)
    deq = script.ggml_dequantize(lib, name, ref, x.size).reshape(x.shape)
    np.testing.assert_array_equal(dequantize(TYPES[name], ref, x.shape).view(np.uint32), deq.view(np.uint32))
