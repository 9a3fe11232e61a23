"""apr_qa.quant against gguf-py (byte for byte) and torch (BF16), padding and size rules, and the compiled
quantizers against the numpy ports and llama.cpp's recorded bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from apr_qa.dtypes import DType
from apr_qa import native_build
from apr_qa.errors import FormatError
from apr_qa.quant import THREADS_ENV, dequantize, native, q4_0, q4_k, q6_k, quantize

RNG = np.random.default_rng(12345)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _cases() -> dict[str, np.ndarray]:
    """Rows of 256 exercising the 32-wide quantizers' rounding, sign and scale edge cases."""
    n = lambda s: RNG.standard_normal((4, 256)) * s  # noqa: E731
    zero_blocks = n(0.1)
    zero_blocks[:, 32:64] = 0.0
    zero_blocks[1] = 0.0
    neg_max = np.abs(n(1.0))
    neg_max[:, ::32] = -5.0  # every block's largest magnitude is negative (Q4_0 keeps its sign)
    ties = np.tile([2.0, -2.0, 1.0, 0.25], (4, 64))  # +a and -a in one block: the first one wins
    ties[1] *= -1
    halves = RNG.integers(-254, 255, (4, 256)) / 2.0
    halves[:, ::32] = 127.0  # d = 1 exactly, so x/d hits .5 ties of roundf
    cases = {
        "normal": n(0.02),
        "wide": n(30.0),
        "zero_blocks": zero_blocks,
        "negative_max": neg_max,
        "ties": ties,
        "halves": halves,
        "tiny_subnormal_f16_scale": n(1e-6),
        "tinier": n(1e-9),
        "huge": n(1e4),
        "f16_overflow": n(1e7),
        "all_positive": RNG.uniform(1, 2, (4, 256)),
        "all_negative": -RNG.uniform(1, 2, (4, 256)),
        "constant": np.full((4, 256), 0.3),
    }
    return {k: v.astype(np.float32) for k, v in cases.items()}


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0])
def test_block32_quantize_matches_gguf_bytes(dtype, case):
    x = CASES[case]
    ours = quantize(dtype, x)
    with np.errstate(all="ignore"):
        ref = gq.quantize(x, GT[dtype.name]).reshape(-1)
    assert ours.dtype == np.uint8 and ours.shape == (dtype.nbytes(x.shape),)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0])
def test_block32_bytes_do_not_depend_on_torch_threads(dtype):
    torch = pytest.importorskip("torch")
    x = np.concatenate([CASES["normal"], CASES["halves"], CASES["ties"]])
    x = np.tile(x, (300, 1))  # 3.1 M values: chunks large enough for torch to split across threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = quantize(dtype, x)
        torch.set_num_threads(2)
        two = quantize(dtype, x)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, gq.quantize(x, GT[dtype.name]).reshape(-1))


def test_q4_0_all_zero_block_keeps_ggml_scale_sign():
    # ggml starts from max = +0.0, so an all-zero block stores d = 0 / -8 = -0.0 (0x8000) even
    # when it begins with -0.0; gguf-py picks the first element and would store +0.0 there.
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = -0.0
    assert quantize(DType.Q4_0, x)[:2].tolist() == [0x00, 0x80]


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K])
def test_dequantize_matches_gguf_bits(dtype):
    x = np.concatenate([CASES["normal"], CASES["wide"], CASES["zero_blocks"], CASES["all_negative"]])
    raw = quantize(dtype, x)
    ours = dequantize(dtype, raw, x.shape)
    ref = gq.dequantize(raw.reshape(x.shape[0], -1), GT[dtype.name])
    np.testing.assert_array_equal(_bits(ours), _bits(ref))


def test_q6_k_dequantize_matches_gguf_bits_on_random_blocks():
    raw = RNG.integers(0, 256, (64, 210), dtype=np.uint8)
    raw[:, 208:210] = np.float16(RNG.uniform(-0.1, 0.1, 64)).reshape(-1, 1).view(np.uint8)
    ours = dequantize(DType.Q6_K, raw, (8, 8 * 256))
    ref = gq.dequantize(raw.reshape(8, -1), GT.Q6_K)
    np.testing.assert_array_equal(_bits(ours), _bits(ref))


@pytest.mark.parametrize("dtype, low, high", [(DType.Q4_K, 0.05, 0.12), (DType.Q6_K, 0.01, 0.03)])
def test_k_quant_round_trip_error_is_that_of_its_bit_width(dtype, low, high):
    x = RNG.standard_normal((16, 1024)).astype(np.float32) * np.float32(0.02)
    y = dequantize(dtype, quantize(dtype, x), x.shape)
    rel_rmse = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2))
    assert low < rel_rmse < high, rel_rmse  # Gaussian data: Q4_K ~8 %, Q6_K ~2 %
    assert np.abs(y - x).max() < 0.25 * np.abs(x).max()


def test_q4_k_special_blocks():
    x = np.zeros((3, 256), np.float32)
    x[1] = -2.5  # constant negative: scale 0, min 2.5
    x[2] = np.linspace(-1, 3, 256)
    raw = quantize(DType.Q4_K, x).reshape(3, 144)
    assert not raw[0].any()  # all-zero super-block is all-zero bytes
    y = dequantize(DType.Q4_K, raw, x.shape)
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_allclose(y[1], -2.5, rtol=2e-3)
    # all-positive sub-blocks get min 0, so levels are max/15 apart: error up to ~0.1 at x ~ 3
    np.testing.assert_allclose(y[2], x[2], atol=0.11)


def test_seq_sum_is_the_c_loop_order():
    # The Q4_K port relies on numpy reducing axis 0 of a (32, m) array one row at a time.
    a = (RNG.standard_normal((32, 24)) * RNG.uniform(1e-3, 1e3, (32, 24))).astype(np.float32)
    acc = a[0].copy()
    for row in a[1:]:
        acc += row
    np.testing.assert_array_equal(_bits(q4_k._seq_sum(a)), _bits(acc))


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K])
def test_rows_are_padded_to_whole_blocks(dtype):
    x = RNG.standard_normal((3, 576)).astype(np.float32)
    raw = quantize(dtype, x)
    assert raw.size == dtype.nbytes(x.shape) == 3 * dtype.row_bytes(576)
    width = dtype.row_bytes(576) // dtype.block_bytes * dtype.block_elems
    padded = np.zeros((3, width), np.float32)
    padded[:, :576] = x
    np.testing.assert_array_equal(raw, quantize(dtype, padded))
    y = dequantize(dtype, raw, x.shape)
    assert y.shape == x.shape and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, dequantize(dtype, raw, padded.shape)[:, :576])


@pytest.mark.parametrize("dtype", list(DType))
@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 40), (0, 256), (4, 0)])
def test_any_shape_round_trips_with_exact_size(dtype, shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    raw = quantize(dtype, x)
    assert raw.shape == (dtype.nbytes(shape),)
    y = dequantize(dtype, raw.tobytes(), shape)
    assert y.shape == shape and y.dtype == np.float32
    tol = {DType.F32: 0, DType.F16: 1e-3, DType.BF16: 1e-2}.get(dtype, 0.3)
    np.testing.assert_allclose(y, x, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", list(DType))
@pytest.mark.parametrize("shape", [(5,), (1, 32), (2, 256)])
def test_quantize_never_modifies_its_input(dtype, shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    before = x.copy()
    quantize(dtype, x)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", list(DType))
def test_strided_input_quantizes_like_its_contiguous_copy(dtype):
    x = RNG.standard_normal((3, 1024)).astype(np.float32)[:, ::2]
    np.testing.assert_array_equal(quantize(dtype, x), quantize(dtype, np.ascontiguousarray(x)))
    raw = memoryview(quantize(dtype, x).tobytes())
    assert dequantize(dtype, raw, x.shape).shape == x.shape


def test_dequantize_rejects_wrong_size():
    raw = quantize(DType.Q8_0, np.ones((2, 64), np.float32))
    with pytest.raises(FormatError, match="Q8_0 tensor of shape \\[2, 64\\] needs 136 bytes, got 135"):
        dequantize(DType.Q8_0, raw[:-1], (2, 64))


def test_f16_is_ieee_round_to_nearest_even():
    x = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65520.0, 1e-8, -0.0, np.inf, np.nan], np.float32)
    raw = quantize(DType.F16, x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(raw.view(np.uint16), x.astype(np.float16).view(np.uint16))
    assert raw.view(np.float16)[0] == 1.0 and raw.view(np.float16)[1] == 1 + 2**-9  # ties to even
    assert np.isinf(raw.view(np.float16)[2])


def _bf16_inputs() -> np.ndarray:
    special = np.array(
        [0.0, -0.0, 1.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45, 1.00390625, 1.01171875], np.float32
    )
    ties = (np.arange(0x3F800000, 0x3F800000 + 2**20, 2**15, dtype=np.uint32) | 0x8000).view(np.float32)
    bits = RNG.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    rand = bits.view(np.float32)
    return np.concatenate([special, ties, rand[np.isfinite(rand)], RNG.standard_normal(1000).astype(np.float32)])


def test_bf16_matches_gguf_and_torch():
    torch = pytest.importorskip("torch")
    x = _bf16_inputs()
    ours = quantize(DType.BF16, x).view(np.uint16)
    np.testing.assert_array_equal(ours, gq.quantize(x, GT.BF16).view(np.uint16))
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)
    back = dequantize(DType.BF16, ours.view(np.uint8), x.shape)
    np.testing.assert_array_equal(_bits(back), _bits(torch.from_numpy(x).to(torch.bfloat16).float().numpy()))


def test_bf16_nan_stays_nan_with_ggml_payload():
    torch = pytest.importorskip("torch")
    x = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0xFF812345], np.uint32).view(np.float32)
    ours = quantize(DType.BF16, x).view(np.uint16)
    np.testing.assert_array_equal(ours, gq.quantize(x, GT.BF16).view(np.uint16))
    assert np.isnan(dequantize(DType.BF16, ours.view(np.uint8), x.shape)).all()
    # torch canonicalizes every NaN to 0x7FC0; ggml keeps sign and top payload bits (forced quiet).
    assert torch.from_numpy(x).to(torch.bfloat16).float().isnan().all()
    assert ours.tolist() == [0x7FC0, 0xFFC0, 0x7FC0, 0xFFC1]


# --- compiled kernels (quant/native.py) and the numpy ports they stand in for ------------------

GOLDEN = Path(__file__).parent / "data" / "q4k_llamacpp_golden.npz"
PORTS = {DType.Q4_0: q4_0, DType.Q4_K: q4_k, DType.Q6_K: q6_k}


@pytest.fixture
def fresh_native(monkeypatch):
    """native.library() rebuilt under this test's environment, then forgotten again."""
    native._library.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    native._library.cache_clear()


def _compiled_or_skip():
    lib = native.library()
    if lib is None:
        pytest.skip("no C compiler: the compiled quantizers are unavailable, the numpy ports run instead")
    return lib


def _port_bytes(dtype: DType, x: np.ndarray) -> np.ndarray:
    blocks = np.ascontiguousarray(x, np.float32).reshape(-1, dtype.block_elems)
    out = np.empty((blocks.shape[0], dtype.block_bytes), np.uint8)
    with np.errstate(all="ignore"):
        PORTS[dtype].quantize_blocks_numpy(blocks, out)
    return out.reshape(-1)


def _kernel_bytes(lib, dtype: DType, x: np.ndarray) -> np.ndarray:
    blocks = np.ascontiguousarray(x, np.float32).reshape(-1, dtype.block_elems)
    out = np.empty((blocks.shape[0], dtype.block_bytes), np.uint8)
    getattr(lib, f"{dtype.name.lower()}_quantize")(blocks.ctypes.data, out.ctypes.data, blocks.shape[0])
    return out.reshape(-1)


@pytest.mark.parametrize("rint_safe", [q4_k._RINT_SAFE, np.float32(0)], ids=["fast-rounding", "exact-rounding"])
@pytest.mark.parametrize("dtype", sorted(PORTS, key=lambda d: d.name))
def test_numpy_ports_match_recorded_llamacpp_bytes(dtype, rint_safe, monkeypatch):
    # The fallback when no compiler is present; Q4_K's port rounds with np.rint where that provably
    # equals ggml's nearest_int and emulates the bit trick otherwise (forced everywhere here).
    monkeypatch.setattr(q4_k, "_RINT_SAFE", rint_safe)
    with np.load(GOLDEN) as golden:
        np.testing.assert_array_equal(_port_bytes(dtype, golden["inputs"]), golden[dtype.name.lower()])


def _kernel_cases() -> np.ndarray:
    rng = np.random.default_rng(99)
    rows = [v.reshape(-1, 256) for v in CASES.values()]
    rows += [
        rng.standard_normal((8, 256)) * 10.0 ** rng.uniform(-12, 6, (8, 1)),
        rng.standard_normal((4, 256)) * np.repeat(10.0 ** rng.uniform(-8, 4, (4, 16)), 16, axis=1),
        -np.abs(rng.standard_normal((4, 256))),
        rng.standard_t(1, (4, 256)),
        np.repeat(rng.standard_normal((4, 16)), 16, axis=1),  # constant sub-blocks
        rng.standard_normal((2, 256)) * 1e-39,  # float32 subnormals
        rng.standard_normal((2, 256)) * 1e30,  # x*x overflows: NaN scales that ggml's scan skips
    ]
    x = np.concatenate(rows).astype(np.float32)
    bf16 = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)  # real weights are often bf16 values
    return np.concatenate([x, bf16])


@pytest.mark.parametrize("dtype", sorted(PORTS, key=lambda d: d.name))
def test_compiled_kernels_match_numpy_ports(dtype):
    lib = _compiled_or_skip()
    x = _kernel_cases()
    np.testing.assert_array_equal(_kernel_bytes(lib, dtype, x), _port_bytes(dtype, x))


def test_generic_build_matches_recorded_llamacpp_bytes(tmp_path):
    # The cached build targets this CPU (-march=native: 8 lanes with AVX2); a build for the baseline
    # target runs 4 lanes per vector, a different code path through the same source.
    _compiled_or_skip()
    path = tmp_path / "generic.so"
    subprocess.run([native_build.compiler(), *native.FLAGS, "-o", str(path), str(native.SOURCE), "-lm"], check=True)
    lib = native._bind(path)
    with np.load(GOLDEN) as golden:
        for dtype in PORTS:
            np.testing.assert_array_equal(_kernel_bytes(lib, dtype, golden["inputs"]), golden[dtype.name.lower()])
    x = _kernel_cases()
    np.testing.assert_array_equal(_kernel_bytes(lib, DType.Q4_K, x), _kernel_bytes(native.library(), DType.Q4_K, x))


def test_disabled_kernels_fall_back_to_the_numpy_ports(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    x = CASES["normal"]
    out = np.empty((x.size // 256, 144), np.uint8)
    assert not native.run("q4_k", x.reshape(-1, 256), out)
    with np.load(GOLDEN) as golden:
        np.testing.assert_array_equal(quantize(DType.Q4_K, golden["inputs"]), golden["q4_k"])


def test_missing_compiler_warns_and_falls_back(fresh_native, tmp_path):
    fresh_native.setenv("CC", str(tmp_path / "no-such-cc"))
    fresh_native.setenv("PATH", str(tmp_path))  # no cc, gcc or clang either
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        assert native.library() is None
    x = CASES["wide"]
    np.testing.assert_array_equal(quantize(DType.Q6_K, x), _port_bytes(DType.Q6_K, x))


def test_failing_compiler_warns_and_falls_back(fresh_native, tmp_path):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` program to stand in for a failing compiler")
    fresh_native.setenv("CC", false)
    fresh_native.setenv(native_build.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="cannot build kernels.c"):
        assert native.library() is None
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-built left behind


def test_build_is_cached_per_source_and_cpu(fresh_native, tmp_path):
    _compiled_or_skip()
    fresh_native.setenv(native_build.CACHE_ENV, str(tmp_path))
    cc = native_build.compiler()
    build = lambda: native_build.build(cc, native.SOURCE, native.FLAGS, "quant-kernels", ("-lm",))  # noqa: E731
    first = build()
    stamp = first.stat().st_mtime_ns
    assert build() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no build folders left


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.Q6_K])
def test_k_quant_bytes_do_not_depend_on_threads(dtype, monkeypatch):
    x = np.tile(np.concatenate([CASES["normal"], CASES["zero_blocks"], CASES["wide"]]), (30, 1))  # 6 chunks
    monkeypatch.setenv(THREADS_ENV, "1")
    one = quantize(dtype, x)
    monkeypatch.setenv(THREADS_ENV, "3")
    np.testing.assert_array_equal(quantize(dtype, x), one)


def test_a_kernel_that_disagrees_with_its_port_disables_itself_only(fresh_native):
    """Each compiled kernel is checked against its own numpy port on first use: a q4_k port that moved
    (here: made to write zeros) turns off the q4_k kernel, with a warning, and leaves q4_0's in use."""
    _compiled_or_skip()
    native._library.cache_clear()
    fresh_native.setattr(q4_k, "quantize_blocks_numpy", lambda blocks, out: out.fill(0))
    assert native.library("q4_0") is not None
    with pytest.warns(RuntimeWarning, match="q4_k: .* blocks differ"):
        assert native.library("q4_k") is None
