"""Throughput of apr_qa.quant next to gguf-py's numpy quantizers, same data, same run.

Prints MB/s of float32 input (quantize) or float32 output (dequantize), best of --repeat runs,
and checks that both produce the same bytes before timing anything. Times are CPU seconds of
this process (both sides are single-threaded numpy), so a busy machine slows both alike; on an
idle machine they equal wall time.

    python scripts/bench_quant.py [--mb 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from apr_qa.dtypes import DType
from apr_qa.quant import dequantize, quantize

PEERS = {DType.Q8_0: GT.Q8_0, DType.Q4_0: GT.Q4_0, DType.BF16: GT.BF16, DType.F16: GT.F16}


def best_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="float32 input size in MB (default 64)")
    ap.add_argument("--q4k-mb", type=float, default=8, help="input size for the slower K-quants")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    cols = 4096
    rows = max(1, int(args.mb * 2**20 / 4 / cols))
    x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    mb = x.nbytes / 2**20
    print(f"input: float32 {rows}x{cols} = {mb:.0f} MB (K-quants: first {args.q4k_mb:g} MB), "
          f"N(0, 0.02), best of {args.repeat}, CPU time")
    print(f"{'dtype':6} {'operation':10} {'ours MB/s':>10} {'gguf-py MB/s':>13} {'speedup':>8}")

    for dtype in (DType.Q8_0, DType.Q4_0, DType.F16, DType.BF16, DType.Q4_K, DType.Q6_K):
        slow = dtype in (DType.Q4_K, DType.Q6_K)
        data = x[: max(1, int(args.q4k_mb * 2**20 / 4 / cols))] if slow else x
        size = data.nbytes / 2**20
        ours_raw = quantize(dtype, data)
        peer = PEERS.get(dtype)
        t_ours = best_seconds(lambda: quantize(dtype, data), args.repeat)
        if peer is not None:
            peer_raw = np.asarray(gq.quantize(data, peer)).view(np.uint8).reshape(-1)
            if not np.array_equal(ours_raw, peer_raw):
                raise SystemExit(f"{dtype.name}: bytes differ from gguf-py, refusing to compare speed")
            t_peer = best_seconds(lambda: gq.quantize(data, peer), args.repeat)
            print(f"{dtype.name:6} {'quantize':10} {size / t_ours:10.0f} {size / t_peer:13.0f} {t_peer / t_ours:7.1f}x")
        else:
            print(f"{dtype.name:6} {'quantize':10} {size / t_ours:10.0f} {'(none)':>13} {'':>8}")

        peer_dq = PEERS.get(dtype) or GT[dtype.name]
        grid = ours_raw.reshape(data.shape[0], -1)
        t_ours = best_seconds(lambda: dequantize(dtype, ours_raw, data.shape), args.repeat)
        t_peer = best_seconds(lambda: gq.dequantize(grid, peer_dq), args.repeat)
        print(f"{dtype.name:6} {'dequantize':10} {size / t_ours:10.0f} {size / t_peer:13.0f} {t_peer / t_ours:7.1f}x")


if __name__ == "__main__":
    main()
