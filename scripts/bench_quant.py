"""Throughput of apr_qa.quant next to its peers, same data, same run.

Prints MB/s of float32 input (quantize) or float32 output (dequantize) for:
  ours 1thr / 2thr  apr_qa.quant.quantize with 1 or 2 threads (torch threads and $APR_QA_QUANT_THREADS)
  numpy port        the numpy fallback of the compiled quantizers (Q4_0, Q4_K, Q6_K), 1 thread
  gguf-py           gguf.quants (numpy, single-threaded; it has no K-quant quantizer)
  llama.cpp         ggml_quantize_chunk, the function llama.cpp's quantizer calls per tensor (1 thread,
                    reference code), when llama_cpp is importable or APR_QA_GGML_LIB names libggml-base
and our best speed over each peer's. Checks that every quantizer produces the same bytes before
timing anything. Each figure is the median wall time of --repeat runs, the candidates measured in
turn within each repeat so that a busy machine slows all alike; the load average is printed.

    python scripts/bench_quant.py [--mb 64] [--q4k-mb 16] [--repeat 5]

With --model HF_FOLDER it times whole conversions instead (`apr_qa.convert.convert` at each of
--levels, a mixture such as q4_k_m included) next to llama.cpp's own quantizer (`llama_model_quantize`
on our f32 GGUF export, same file type, 2 threads) when llama_cpp is importable, in MB/s of float32
weights; llama.cpp switches rows that are not whole super-blocks to other types, the .apr pads them.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import time
from pathlib import Path

# As apr-qa's CLI does, before torch loads: OpenMP spin-waiting starves 2-thread torch on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from apr_qa.dtypes import DType
from apr_qa.quant import THREADS_ENV, dequantize, native, q4_0, q4_k, q6_k, quantize

PEERS = {DType.Q8_0: GT.Q8_0, DType.Q4_0: GT.Q4_0, DType.BF16: GT.BF16, DType.F16: GT.F16}
PORTS = {DType.Q4_0: q4_0, DType.Q4_K: q4_k, DType.Q6_K: q6_k}
LLAMACPP_NAMES = {DType.Q4_0: "q4_0", DType.Q8_0: "q8_0", DType.Q4_K: "q4_k", DType.Q6_K: "q6_k"}
THREADS = (1, 2)
COLUMNS = [*THREADS, "numpy port", "gguf-py", "llama.cpp"]
PEER_COLUMNS = ("gguf-py", "llama.cpp")


def load_llamacpp():
    """(script module, libggml) through scripts/make_q4k_golden.py's binding, or None."""
    lib_path = os.environ.get("APR_QA_GGML_LIB")
    if not lib_path and importlib.util.find_spec("llama_cpp") is None:
        return None
    spec = importlib.util.spec_from_file_location("make_q4k_golden", Path(__file__).with_name("make_q4k_golden.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        return script, script.load_ggml(lib_path or None)
    except (ImportError, OSError) as exc:
        print(f"llama.cpp column skipped: {exc}")
        return None


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ[THREADS_ENV] = str(n)


def median_seconds(fns: dict, repeat: int) -> dict:
    """Median wall time of each callable, interleaving them; int keys are thread counts for ours."""
    times = {key: [] for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            set_threads(key if isinstance(key, int) else 1)
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def row(dtype: DType, op: str, size: float, t: dict) -> str:
    cells = " ".join(f"{size / t[c]:10.0f}" if c in t else f"{'-':>10}" for c in COLUMNS)
    best = min(t[n] for n in THREADS)
    ratios = " ".join(f"{t[p] / best:9.1f}x" if p in t else f"{'-':>10}" for p in PEER_COLUMNS)
    return f"{dtype.name:6} {op:10} {cells} {ratios}"


def port_bytes(dtype: DType, data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, dtype.block_elems)
    out = np.empty((blocks.shape[0], dtype.block_bytes), np.uint8)
    PORTS[dtype].quantize_blocks_numpy(blocks, out)
    return out.reshape(-1)


def bench_model(model: Path, levels: list[str], repeat: int) -> None:
    """Whole conversions at each level, and llama.cpp quantizing the f32 export, interleaved."""
    import tempfile

    from apr_qa.convert import convert
    from apr_qa.dtypes import QUANT_LEVELS
    from apr_qa.gguf_export import export_gguf

    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        f32 = convert(model, work / "f32.apr", "f32")
        mb = f32.param_count * 4 / 2**20
        fns = {f"ours {lv}": functools.partial(convert, model, work / f"{lv}.apr", lv) for lv in levels}
        if importlib.util.find_spec("llama_cpp") is not None:
            spec = importlib.util.spec_from_file_location("make_q4km_golden",
                                                          Path(__file__).with_name("make_q4km_golden.py"))
            golden = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(golden)
            export_gguf(f32.output, work / "f32.gguf")
            for lv in levels:
                fns[f"llama.cpp {lv}"] = functools.partial(golden.llamacpp_quantize, work / "f32.gguf",
                                                           work / f"{lv}.llamacpp.gguf",
                                                           QUANT_LEVELS[lv].gguf_file_type)
        print(f"model {model.name}: {f32.param_count:,} parameters ({mb:.0f} MB float32); median of {repeat} "
              f"interleaved runs, 2 threads; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        times = {key: [] for key in fns}
        set_threads(2)
        for _ in range(repeat):
            for key, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        for key, t in times.items():
            print(f"{key:20} {statistics.median(t):7.2f} s {mb / statistics.median(t):8.0f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="float32 input size in MB (default 64)")
    ap.add_argument("--q4k-mb", type=float, default=16, help="input size for the K-quants (default 16)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", type=Path, help="time whole conversions of this HF folder instead")
    ap.add_argument("--levels", default="q4_k,q4_k_m,q6_k", help="levels for --model (default q4_k,q4_k_m,q6_k)")
    args = ap.parse_args()
    if args.model:
        bench_model(args.model, args.levels.split(","), args.repeat)
        return

    llamacpp = load_llamacpp()
    rng = np.random.default_rng(0)
    cols = 4096
    rows = max(1, int(args.mb * 2**20 / 4 / cols))
    x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    compiled = "compiled kernels" if native.library() is not None else "NO compiled kernels (numpy ports)"
    print(f"input: float32 {rows}x{cols} = {x.nbytes / 2**20:.0f} MB (K-quants: first {args.q4k_mb:g} MB), "
          f"N(0, 0.02); median of {args.repeat} interleaved runs, wall time; {compiled}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    head = " ".join(f"{f'ours {c}thr' if isinstance(c, int) else c:>10}" for c in COLUMNS)
    ratios = " ".join(f"{'/ ' + p:>10}" for p in PEER_COLUMNS)
    print(f"{'dtype':6} {'operation':10} {head} {ratios}   (MB/s; ratios: best ours over the peer)")

    for dtype in (DType.Q8_0, DType.Q4_0, DType.F16, DType.BF16, DType.Q4_K, DType.Q6_K):
        slow = dtype in (DType.Q4_K, DType.Q6_K)
        data = x[: max(1, int(args.q4k_mb * 2**20 / 4 / cols))] if slow else x
        size = data.nbytes / 2**20
        ours_raw = quantize(dtype, data)
        fns = {n: functools.partial(quantize, dtype, data) for n in THREADS}
        if dtype in PORTS:
            fns["numpy port"] = functools.partial(port_bytes, dtype, data)
        if dtype in PEERS:
            fns["gguf-py"] = functools.partial(gq.quantize, data, PEERS[dtype])
        if llamacpp is not None and dtype in LLAMACPP_NAMES:
            script, lib = llamacpp
            fns["llama.cpp"] = functools.partial(script.ggml_quantize, lib, LLAMACPP_NAMES[dtype], data)
        references = {who: np.asarray(fn()).view(np.uint8).reshape(-1) for who, fn in fns.items() if who in COLUMNS[2:]}
        for who, ref in references.items():
            if not np.array_equal(ours_raw, ref):
                raise SystemExit(f"{dtype.name}: bytes differ from {who}, refusing to compare speed")
        print(row(dtype, "quantize", size, median_seconds(fns, args.repeat)), flush=True)

        peer_dq = PEERS.get(dtype) or GT[dtype.name]
        grid = ours_raw.reshape(data.shape[0], -1)
        fns = {n: functools.partial(dequantize, dtype, ours_raw, data.shape) for n in THREADS}
        fns["gguf-py"] = functools.partial(gq.dequantize, grid, peer_dq)
        print(row(dtype, "dequantize", size, median_seconds(fns, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
