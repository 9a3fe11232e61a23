#!/usr/bin/env python3
"""Convert a synthetic 7B-shaped llama (bf16 SafeTensors shards) with `apr-qa convert`: peak RSS, wall time.

Not part of CI. The model has Llama-2-7B's shapes (32 layers, hidden 4096, intermediate 11008,
32 heads, vocab 32000, untied head): 6.74 B parameters, 13.5 GB on disk. Its weights are random
but deterministic (seeded per tensor), N(0, 0.02) rounded to bf16, norms near 1. The converter
streams one tensor at a time, so its peak memory follows the largest tensor (the 32000 x 4096
embedding and head) rather than the model; the goal is a peak RSS below 1.5 GB.

The model is written under --workdir (default /tmp) after checking the free space, and deleted
afterwards (--keep to keep it). With --layers N < 32 (when disk or time is short) the model has
fewer decoder layers; the wall time is then also extrapolated to 32 layers, by parameter count,
and labelled as such. Peak RSS is that of the `apr-qa convert` process (ru_maxrss from wait4),
cross-checked by sampling its RSS with psutil every 0.1 s.

    python scripts/bench_scale.py [--layers 32] [--quant q4_k] [--workdir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HIDDEN, INTERMEDIATE, HEADS, VOCAB, FULL_LAYERS = 4096, 11008, 32, 32000, 32
SHARD_BYTES = 2 * 1024**3  # HF-style shards of at most ~2 GB
GB, MB = 1e9, 1024**2
# Bytes stored per parameter at each level (K-quants: 144 or 210 bytes per 256 weights).
STORED_BYTES = {"q4_k": 144 / 256, "q6_k": 210 / 256, "q4_0": 18 / 32, "q8_0": 34 / 32, "f16": 2, "bf16": 2, "f32": 4}


def config(layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def tensor_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF LlamaForCausalLM names and shapes, in checkpoint order."""
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)), (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            (p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    return shapes + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def param_count(layers: int) -> int:
    return sum(int(np.prod(shape)) for _, shape in tensor_shapes(layers))


def bf16_bits(rng: np.random.Generator, n: int, norm: bool) -> np.ndarray:
    """n bf16 values (uint16 bit patterns), rounded to nearest even from float32."""
    x = rng.standard_normal(n, dtype=np.float32)
    x *= np.float32(0.1 if norm else 0.02)
    if norm:
        x += np.float32(1.0)
    bits = x.view(np.uint32)
    bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (bits >> np.uint32(16)).astype(np.uint16)


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seeds: dict[str, int]) -> int:
    """One SafeTensors file, streamed: header first, then each tensor generated in 16 M-value pieces."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            rng = np.random.default_rng(seeds[name])
            left = int(np.prod(shape))
            while left:
                n = min(left, 1 << 24)
                f.write(bf16_bits(rng, n, norm=len(shape) == 1).tobytes())
                left -= n
    return offset


def write_model(folder: Path, layers: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(layers)
    seeds = {name: i for i, (name, _) in enumerate(shapes)}  # deterministic per tensor
    shards, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = int(np.prod(shape)) * 2
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(folder / file, tensors, seeds)
        weight_map.update(dict.fromkeys((name for name, _ in tensors), file))
        print(f"  wrote {file} ({len(tensors)} tensors)", flush=True)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(config(layers), indent=2))


def run_measured(cmd: list[str]) -> tuple[float, float, float, int]:
    """Run cmd; return (wall seconds, peak RSS MB by wait4, peak RSS MB sampled, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    sampled = [0.0]
    done = threading.Event()

    def sample() -> None:
        try:
            ps = psutil.Process(proc.pid)
            while not done.is_set():
                sampled[0] = max(sampled[0], ps.memory_info().rss / MB)
                done.wait(0.1)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    return wall, usage.ru_maxrss / 1024, sampled[0], os.waitstatus_to_exitcode(status)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=FULL_LAYERS, help="decoder layers (default 32, the 7B shape)")
    ap.add_argument("--quant", default="q4_k", choices=sorted(STORED_BYTES))
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic model and the .apr")
    args = ap.parse_args()

    params = param_count(args.layers)
    source_bytes = params * 2
    output_bytes = params * STORED_BYTES[args.quant]
    free = shutil.disk_usage(args.workdir).free
    print(f"model: {args.layers} layers, {params / 1e9:.2f} B parameters, {source_bytes / GB:.1f} GB bf16; "
          f"{args.quant} output ~{output_bytes / GB:.1f} GB; free in {args.workdir}: {free / GB:.1f} GB")
    needed = source_bytes + output_bytes + 1 * GB
    if free < needed:
        fit = max(n for n in range(FULL_LAYERS + 1)
                  if n == 0 or param_count(n) * (2 + STORED_BYTES[args.quant]) + GB < free)
        raise SystemExit(f"not enough disk: {needed / GB:.1f} GB needed, {free / GB:.1f} GB free; "
                         f"try --layers {fit}")

    apr_qa = Path(sys.executable).with_name("apr-qa")
    work = Path(tempfile.mkdtemp(prefix="apr-qa-scale-", dir=args.workdir))
    try:
        model, out = work / "llama-7b-shaped", work / f"model.{args.quant}.apr"
        started = time.perf_counter()
        write_model(model, args.layers)
        print(f"synthetic model written in {time.perf_counter() - started:.0f} s (not part of the measurement)")
        cmd = [str(apr_qa), "convert", str(model), str(out), "--quant", args.quant, "--json", str(work / "conv.json")]
        load_before = os.getloadavg()[0]
        wall, peak_wait4, peak_sampled, code = run_measured(cmd)
        if code != 0:
            raise SystemExit(f"apr-qa convert exited {code}")
        summary = json.loads((work / "conv.json").read_text())
        f32_mb = params * 4 / MB
        print(f"\napr-qa convert --quant {args.quant}: {wall:.0f} s wall, {f32_mb / wall:.0f} MB/s of float32 "
              f"weights; output {out.stat().st_size / GB:.2f} GB, {summary['tensors']} tensors")
        print(f"peak RSS {peak_wait4:.0f} MB (wait4 ru_maxrss; psutil sampling: {peak_sampled:.0f} MB), "
              f"goal < 1536 MB: {'met' if peak_wait4 < 1536 else 'NOT met'}")
        print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs")
        if args.layers != FULL_LAYERS:
            scale = param_count(FULL_LAYERS) / params
            print(f"EXTRAPOLATED to {FULL_LAYERS} layers by parameter count (x{scale:.2f}): ~{wall * scale:.0f} s "
                  f"wall; peak RSS is set by the largest tensor, which this model has too")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
