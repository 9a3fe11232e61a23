"""Throughput of apr_qa.quant next to gguf-py's numpy quantizers, same data, same run.

Prints MB/s of float32 input (quantize) or float32 output (dequantize): ours with torch limited
to 1 thread (a fair match for gguf-py, which is single-threaded numpy) and with 2 threads, and
gguf-py. Checks that both produce the same bytes before timing anything. Times are wall-clock,
best of --repeat runs, measured in turn (gguf-py, ours 1 thread, ours 2 threads) so a busy
machine slows all alike; the best run is the one least disturbed.

    python scripts/bench_quant.py [--mb 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from apr_qa.dtypes import DType
from apr_qa.quant import dequantize, quantize

PEERS = {DType.Q8_0: GT.Q8_0, DType.Q4_0: GT.Q4_0, DType.BF16: GT.BF16, DType.F16: GT.F16}
THREADS = (1, 2)


def best_seconds(fns: dict, repeat: int) -> dict:
    """Best wall time of each callable, interleaving them; keys with an int are torch thread counts."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for key, fn in fns.items():
            if isinstance(key, int):
                torch.set_num_threads(key)
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def row(dtype: DType, op: str, size: float, t: dict) -> str:
    ours = " ".join(f"{size / t[n]:10.0f}" for n in THREADS)
    if "peer" not in t:
        return f"{dtype.name:6} {op:10} {ours} {'(none)':>10}"
    ratios = " ".join(f"{t['peer'] / t[n]:7.1f}x" for n in THREADS)
    return f"{dtype.name:6} {op:10} {ours} {size / t['peer']:10.0f} {ratios}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="float32 input size in MB (default 64)")
    ap.add_argument("--q4k-mb", type=float, default=8, help="input size for the slower K-quants")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    cols = 4096
    rows = max(1, int(args.mb * 2**20 / 4 / cols))
    x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    mb = x.nbytes / 2**20
    print(f"input: float32 {rows}x{cols} = {mb:.0f} MB (K-quants: first {args.q4k_mb:g} MB), "
          f"N(0, 0.02), best of {args.repeat}, wall time; MB/s")
    head = " ".join(f"{f'ours {n}thr':>10}" for n in THREADS)
    ratios = " ".join(f"{f'x {n}thr':>8}" for n in THREADS)
    print(f"{'dtype':6} {'operation':10} {head} {'gguf-py':>10} {ratios}")

    for dtype in (DType.Q8_0, DType.Q4_0, DType.F16, DType.BF16, DType.Q4_K, DType.Q6_K):
        slow = dtype in (DType.Q4_K, DType.Q6_K)
        data = x[: max(1, int(args.q4k_mb * 2**20 / 4 / cols))] if slow else x
        size = data.nbytes / 2**20
        ours_raw = quantize(dtype, data)
        peer = PEERS.get(dtype)
        fns = {n: lambda: quantize(dtype, data) for n in THREADS}
        if peer is not None:
            peer_raw = np.asarray(gq.quantize(data, peer)).view(np.uint8).reshape(-1)
            if not np.array_equal(ours_raw, peer_raw):
                raise SystemExit(f"{dtype.name}: bytes differ from gguf-py, refusing to compare speed")
            fns["peer"] = lambda: gq.quantize(data, peer)
        print(row(dtype, "quantize", size, best_seconds(fns, args.repeat)), flush=True)

        peer_dq = PEERS.get(dtype) or GT[dtype.name]
        grid = ours_raw.reshape(data.shape[0], -1)
        fns = {n: lambda: dequantize(dtype, ours_raw, data.shape) for n in THREADS}
        fns["peer"] = lambda: gq.dequantize(grid, peer_dq)
        print(row(dtype, "dequantize", size, best_seconds(fns, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
