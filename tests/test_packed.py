"""Packed execution: quantized matrices multiplied straight from their GGML blocks (runtime.packed,
runtime/matmul.c) against the same blocks dequantized at load, on block-level data, tiny models of
each family kind, and SmolLM2-135M."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apr_qa.convert import convert
from apr_qa.dtypes import DType
from apr_qa.quant import dequantize, quantize
from apr_qa.runtime import load_model
from apr_qa.runtime import kernels as K
from apr_qa.runtime import packed as P
from apr_qa.runtime.native import library

PACKED = [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K]
ROOT = Path(__file__).resolve().parents[1]


def weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Weights whose rows differ in scale by three orders of magnitude, with a few outliers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * np.logspace(-3, 0, rows)[:, None]
    w[rng.random((rows, cols)) < 0.01] *= 8
    return w.astype(np.float32)


def blocks(dtype: DType, rows: int, cols: int, seed: int = 0) -> P.BlockMatrix:
    raw = quantize(dtype, weights(rows, cols, seed))
    return P.BlockMatrix.from_raw(dtype, raw, (rows, cols), torch.float32, torch.device("cpu"))


def exact(b: P.BlockMatrix) -> torch.Tensor:
    """The matrix as apr_qa.quant (ggml's arithmetic) dequantizes it."""
    return torch.from_numpy(dequantize(b.block, b.data.numpy(), b.shape))


@pytest.fixture(scope="module")
def native():
    lib = library()
    if lib is None:
        pytest.skip("the block matmul library could not be built here (no C compiler, or disabled)")
    return lib


# -- block level --------------------------------------------------------------------------------------

# rows of whole blocks, and K-quant rows padded to whole 256-value super-blocks
SHAPES = [(d, c) for d in PACKED for c in (64, 96, 300) if d.block_elems == 256 or c % 32 == 0]


@pytest.mark.parametrize(("dtype", "cols"), SHAPES, ids=lambda v: getattr(v, "name", v))
def test_torch_dequantization_is_ggmls(dtype, cols):
    b = blocks(dtype, 7, cols)
    assert torch.equal(b.dequantize(), exact(b))
    ids = torch.tensor([[6, 0], [3, 3]])
    assert torch.equal(b.rows(ids), exact(b)[ids])


@pytest.mark.parametrize("dtype", PACKED, ids=lambda d: d.name)
def test_native_dequantization_is_bit_exact(dtype, native):
    b = blocks(dtype, 9, 300 if dtype.block_elems == 256 else 320)
    out = torch.empty(b.shape)
    k = b.data.shape[1] // dtype.block_bytes * dtype.block_elems
    native.blocks_dequantize(dtype.code, b.data.data_ptr(), b.shape[0], k, b.shape[1], out.data_ptr())
    assert torch.equal(out, exact(b))


@pytest.mark.parametrize("dtype", PACKED, ids=lambda d: d.name)
@pytest.mark.parametrize("batch", [1, 3, 6, 40])  # one row, a partial tile, tiles + remainder, prefill path
def test_native_matmul_matches_float64(dtype, batch, native):
    b = blocks(dtype, 50, 300 if dtype.block_elems == 256 else 320, seed=batch)
    lin = P.NativeLinear(b, native)
    x = torch.randn(batch, b.shape[1], generator=torch.Generator().manual_seed(batch))
    want = x.double() @ exact(b).double().t()
    got = lin.linear(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()
    assert torch.equal(lin.rows(torch.tensor([4, 49])), exact(b)[[4, 49]])


def product(lib, code: int, w: torch.Tensor, rows: int, k: int, x: torch.Tensor, parallel: int) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows)
    assert lib.blocks_matmul(code, w.data_ptr(), rows, k, x.data_ptr(), x.shape[0], y.data_ptr(), parallel) == 0
    return y


@pytest.mark.parametrize("dtype", [DType.F32, DType.Q4_0, DType.Q6_K], ids=lambda d: d.name)
def test_worker_threads_change_no_result(dtype, native):
    """The rows split between the library's worker threads give the same bits as one thread."""
    if dtype == DType.F32:
        w, rows, k = torch.randn(203, 96), 203, 96
    else:
        b = blocks(dtype, 203, 256)
        w, rows, k = b.data, 203, 256
    x = torch.randn(2, k)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            shared, alone = (product(native, dtype.code, w, rows, k, x, p) for p in (1, 0))
            assert torch.equal(shared, alone)
    finally:
        torch.set_num_threads(threads)


def test_worker_threads_survive_fork(native):
    """A forked child has none of its parent's worker threads: its products run and finish."""
    w, x = torch.randn(256, 64), torch.randn(1, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = product(native, DType.F32.code, w, 256, 64, x, 1)  # the parent's worker is running now
        pid = os.fork()
    finally:
        torch.set_num_threads(threads)
    if pid == 0:  # child: exit status 0 only if the product completes and agrees
        torch.set_num_threads(2)
        ok = torch.equal(product(native, DType.F32.code, w, 256, 64, x, 1), want)
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("a product in a forked child never finished")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_float_rows_kernel_matches_f_linear(dtype, batch, native):
    """Float weights decode through the same row kernel (bfloat16 widened exactly to float32)."""
    w = torch.from_numpy(weights(70, 96)).to(dtype)
    lin = K.float_linear(w)
    assert isinstance(lin, P.FloatLinear)
    x = torch.randn(batch, 96).to(dtype)
    want = F.linear(x.double(), w.double())
    got = lin.linear(x)
    assert got.dtype == dtype
    rounding = 2 ** -8 if dtype == torch.bfloat16 else 1e-6  # the output's own rounding
    assert (got.double() - want).abs().max() <= rounding * want.abs().max()
    assert torch.equal(lin.rows(torch.tensor([3, 69])), w[[3, 69]])


@pytest.mark.parametrize("rows", [1, 7])
def test_rms_norm_rows_match_torch(rows, native):
    from apr_qa.runtime.row_ops import rms_norm

    x, w = torch.randn(rows, 1, 96) * 3, torch.randn(96)
    got = rms_norm(x, w, 1e-5)
    want = F.rms_norm(x.double(), (96,), w.double(), 1e-5)
    assert got is not None and got.shape == x.shape
    assert (got.double() - want).abs().max() <= 1e-6 * want.abs().max()
    assert rms_norm(x[..., :90], w[:90], 1e-5) is None  # width not a multiple of 16: torch's


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 2), (4, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_single_query_attention_matches_sdpa(heads, kv_heads, batch, native):
    from apr_qa.runtime.row_ops import attend_one

    dim, max_len, filled = 32, 20, 13
    keys, values = torch.randn(batch, kv_heads, max_len, dim), torch.randn(batch, kv_heads, max_len, dim)
    keys[:, :, filled:] = values[:, :, filled:] = float("nan")  # slots past the filled ones are never read
    q = torch.randn(batch, heads, 1, dim)
    got = attend_one(q, keys, values, filled, dim ** -0.5)
    want = F.scaled_dot_product_attention(q.double(), keys[:, :, :filled].double(), values[:, :, :filled].double(),
                                          scale=dim ** -0.5, enable_gqa=heads != kv_heads)
    assert got is not None and got.shape == q.shape
    assert (got.double() - want).abs().max() <= 1e-6 * want.abs().max()
    assert attend_one(q.to(torch.bfloat16), keys, values, filled, 1.0) is None


def test_tied_float32_head_is_not_copied(tiny_llama_tied, native):
    model = load_model(tiny_llama_tied)
    assert isinstance(model.lm_head, P.FloatLinear) and model.embed is model.lm_head


@pytest.mark.parametrize("dtype", PACKED, ids=lambda d: d.name)
def test_dequantizing_linear_is_exact_float(dtype):
    b = blocks(dtype, 24, 256)
    x = torch.randn(2, 256)
    lin = P.DequantLinear(b)
    assert torch.equal(lin.linear(x), F.linear(x, exact(b)))


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0, DType.Q4_K], ids=lambda d: d.name)
def test_torch_int4_kernel_reads_the_blocks(dtype):
    """The opt-in torch int4 path: exact nibbles, bfloat16 scales, activations and outputs."""
    from apr_qa.runtime import torch_int4

    if not torch_int4.int4_kernel_available():
        pytest.skip("torch's CPU int4 kernel is not vectorized on this CPU")
    b = blocks(dtype, 72, 320 if dtype != DType.Q4_K else 300)  # rows: a 64-row block and a partial one
    lin = torch_int4.Int4Linear(b)
    rows = lin.rows(torch.arange(72))
    # every value is the exact one up to the bfloat16 rounding of its (scale, zero)
    scale = exact(b).abs().amax(dim=1, keepdim=True)
    assert ((rows - exact(b)).abs() <= 2 ** -7 * scale).all()
    x = torch.randn(3, b.shape[1])
    want = F.linear(x, rows)
    assert (lin.linear(x) - want).abs().max() <= 2 ** -7 * want.abs().max()


def test_row_selection_and_concatenation_move_whole_rows():
    q, k = blocks(DType.Q4_0, 8, 64, seed=1), blocks(DType.Q4_0, 4, 64, seed=2)
    fused = P.stack_rows([q, k])
    assert isinstance(fused, P.BlockMatrix)
    order = torch.tensor([11, 0, 5, 3])
    assert torch.equal(fused[order].dequantize(), torch.cat([exact(q), exact(k)])[order])
    mixed = P.stack_rows([q, blocks(DType.Q6_K, 4, 64, seed=3), torch.randn(2, 64)])
    assert isinstance(mixed, P.RowStack) and mixed.shape == (14, 64)
    x = torch.randn(1, 64)
    want = torch.cat([F.linear(x, exact(q)), F.linear(x, mixed.parts[1].dequantize()), F.linear(x, mixed.parts[2])], -1)
    assert torch.allclose(P.linear(x, K.prepare_linear(mixed, torch.device("cpu"))), want, rtol=0, atol=1e-5)


# -- tiny models, packed against dequantized ------------------------------------------------------------

def assert_close(packed: list[torch.Tensor], dequantized: list[torch.Tensor]) -> None:
    """Within P.TOLERANCE of the dequantized output's range (float32 summation order)."""
    for got, want in zip(packed, dequantized, strict=True):
        spread = float(want.max() - want.min())
        assert float((got - want).abs().max()) <= P.TOLERANCE * spread


def packed_objects(model) -> list:
    found = []
    for layer in getattr(model, "layers", None) or model.w.layers:
        found += [v for v in vars(layer).values() if P.is_packed(v) or (isinstance(v, tuple) and P.is_packed(v[0]))]
    return found


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")

    def make(source: Path, quant: str) -> Path:
        path = out / f"{source.name}.{quant}.apr"
        if not path.exists():
            convert(source, path, quant)
        return path

    return make


PROMPTS = ["the quick brown fox", "hello world, hello"]


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_k"])
@pytest.mark.parametrize("which", ["tiny_llama", "tiny_llama_tied"])
def test_tiny_decoder_packed_matches_dequantized(which, quant, converted, request):
    path = converted(request.getfixturevalue(which), quant)
    packed, plain = load_model(path), load_model(path, weights="dequantized")
    assert packed.weights == "packed" and len(packed_objects(packed)) == 4 * len(packed.layers)
    assert not packed_objects(plain)
    if which == "tiny_llama_tied":
        assert packed.embed is packed.lm_head  # one resident copy serves the lookup and the head
    ids = [packed.tokenizer.encode(p) for p in PROMPTS]
    assert_close(packed.logits(ids), plain.logits(ids))
    for prompt in ids:
        assert packed.generate([prompt], 12, stop_on_eos=False)[0].token_ids == \
            plain.generate([prompt], 12, stop_on_eos=False)[0].token_ids


def test_tiny_falcon_rows_reordered_in_blocks(tiny_dir, converted):
    import tiny_falcon
    from tiny_models import once

    # the new decoder architecture: grouped QKV rows reordered at load
    folder = once(tiny_dir / "falcon_packed", lambda p: tiny_falcon.make_tiny_falcon(p, "new_decoder"))
    path = converted(folder, "q8_0")
    packed, plain = load_model(path), load_model(path, weights="dequantized")
    assert packed_objects(packed)
    ids = [packed.tokenizer.encode(p) for p in PROMPTS]
    assert_close(packed.logits(ids), plain.logits(ids))


def test_tiny_gguf_q8_0_source_runs_packed(tiny_gguf):
    path = tiny_gguf("Q8_0")  # llama's Q/K rows come back in HF order, whole blocks at a time
    packed, plain = load_model(path), load_model(path, weights="dequantized")
    assert packed_objects(packed)
    ids = [packed.tokenizer.encode(p) for p in PROMPTS]
    assert_close(packed.logits(ids), plain.logits(ids))


@pytest.mark.parametrize("quant", ["q8_0", "q4_k"])
def test_tiny_encoders_packed_match_dequantized(quant, tiny_bert, tiny_dir, converted):
    import tiny_encoders
    from tiny_models import once

    mobile = once(tiny_dir / "mobilebert_packed", tiny_encoders.make_tiny_mobilebert)
    for folder in (tiny_bert, mobile):
        path = converted(folder, quant)
        packed, plain = load_model(path), load_model(path, weights="dequantized")
        assert packed_objects(packed), folder.name
        assert_close(packed.hidden_states([[2, 5, 9, 3], [2, 7, 3]]), plain.hidden_states([[2, 5, 9, 3], [2, 7, 3]]))
        assert torch.allclose(packed.embed(PROMPTS), plain.embed(PROMPTS), rtol=0, atol=1e-5)


def test_cli_weights_option(tiny_llama, converted):
    path = converted(tiny_llama, "q4_0")
    texts = [subprocess.run([sys.executable, "-m", "apr_qa.cli", "run", str(path), "hello world", "--max-new-tokens",
                             "6", "--weights", mode], capture_output=True, text=True, check=True).stdout
             for mode in ("packed", "dequantized")]
    assert texts[0] == texts[1] and texts[0].strip()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA packed path is unmeasured here")
def test_cuda_packed_matches_cpu(tiny_llama, converted):
    path = converted(tiny_llama, "q4_k")
    ids = [load_model(path).tokenizer.encode(p) for p in PROMPTS]
    assert_close(load_model(path, device="cuda").logits(ids), load_model(path, weights="dequantized").logits(ids))


# -- SmolLM2-135M ------------------------------------------------------------------------------------------

SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, there was a little"]


@pytest.fixture(scope="module")
def smollm2_variant(smollm2_derived, converted, tmp_path_factory):
    def make(quant: str) -> Path:
        if quant != "q6_k":
            return converted(smollm2_derived, quant)
        path = tmp_path_factory.mktemp("q6k") / "smollm2.q6_k.apr"  # every matrix in Q6_K (no such level)
        from apr_edit import restore_as, rewrite

        from apr_qa.apr import AprReader

        source = converted(smollm2_derived, "q8_0")
        with AprReader(source) as reader:
            values = {e.name: (e.shape, reader.load(e.name)) for e in reader.entries if e.dtype == DType.Q8_0}
        return rewrite(source, path, lambda meta, plan, payloads: [
            restore_as(DType.Q6_K, name, shape, v, plan, payloads) for name, (shape, v) in values.items()])

    return make


@pytest.mark.real_model
def test_smollm2_q8_0_packed_gives_the_same_greedy_tokens(smollm2_variant):
    path = smollm2_variant("q8_0")
    packed, plain = load_model(path), load_model(path, weights="dequantized")
    for prompt in SMOL_PROMPTS:
        assert packed.generate([prompt], 24, stop_on_eos=False)[0].token_ids == \
            plain.generate([prompt], 24, stop_on_eos=False)[0].token_ids


@pytest.mark.real_model
@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_k", "q6_k"])
def test_smollm2_packed_logits_within_tolerance(quant, smollm2_variant):
    path = smollm2_variant(quant)
    packed, plain = load_model(path), load_model(path, weights="dequantized")
    # a short prompt (the block kernel) and one past NativeLinear.SMALL_BATCH tokens (dequantize + GEMM)
    ids = [packed.tokenizer.encode(p) for p in (SMOL_PROMPTS[0], " ".join(SMOL_PROMPTS * 4))]
    assert len(ids[1]) > P.NativeLinear.SMALL_BATCH
    assert_close(packed.logits(ids), plain.logits(ids))


RSS_SCRIPT = """
import gc, json, sys
import torch
from apr_qa.runtime import load_model
from apr_qa.runtime.native import library
from apr_qa.runtime.packed import resident_bytes
library()
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
before = rss()
model = load_model(sys.argv[1])
gc.collect()
print(json.dumps({"rss": rss() - before, "weights": resident_bytes(model)}))
"""


@pytest.mark.real_model
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_smollm2_q4_0_resident_memory(smollm2_variant):
    """RSS growth over the load (in a fresh process) of q4_0 below 0.45x that of f32, and the packed
    weights at most 1.3x the file (they are the file's blocks; norms and biases stay float32)."""
    measured = {}
    for quant in ("f32", "q4_0"):
        path = smollm2_variant(quant)
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True)
        measured[quant] = {**json.loads(done.stdout), "size": path.stat().st_size}
    q4, f32 = measured["q4_0"], measured["f32"]
    print(f"RSS after load: q4_0 {q4['rss'] / 1e6:.1f} MB ({q4['rss'] / q4['size']:.2f}x its file), "
          f"f32 {f32['rss'] / 1e6:.1f} MB; q4_0 / f32 = {q4['rss'] / f32['rss']:.3f}")
    assert q4["rss"] < 0.45 * f32["rss"]
    assert q4["weights"] <= 1.3 * q4["size"]
