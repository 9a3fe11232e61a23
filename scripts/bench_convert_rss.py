#!/usr/bin/env python3
"""Peak memory of a streaming conversion, next to the model's largest tensor.

Goal (issue: conversion stack): peak RSS <= 3 x largest tensor + 300 MB, for the fp32 SmolLM2
safetensors (540 MB) and for a model twice its size (built here by repeating its layers).
For comparison the same run prints the peak of the naive approach: load every tensor at once with
`safetensors.numpy.load_file`, as a converter without streaming would.

    python scripts/bench_convert_rss.py [--model models/derived/SmolLM2-135M-Instruct] [--quant q8_0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024

CONVERT = "import sys; from apr_qa.convert import convert; convert(sys.argv[1], sys.argv[2], sys.argv[3])"
NAIVE = "import sys; from safetensors.numpy import load_file; d = load_file(sys.argv[1]); print(len(d))"


def peak_rss_of(code: str, *args: str) -> float:
    """Run `code` in a fresh interpreter and return its peak RSS in MB (ru_maxrss of that child)."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {code[:60]}... {args}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def largest_tensor_mb(folder: Path) -> tuple[float, float]:
    """(largest tensor, total) in MB as float32, read from the safetensors headers."""
    import struct

    largest = total = 0
    for shard in folder.glob("*.safetensors"):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            largest = max(largest, count * 4)
            total += count * 4
    return largest / MB, total / MB


def doubled_model(src: Path, dst: Path) -> None:
    """A model twice the size: every decoder layer repeated (layer i and i + n), config adjusted."""
    from safetensors.numpy import load_file, save_file

    config = json.loads((src / "config.json").read_text())
    n = config["num_hidden_layers"]
    tensors = load_file(src / "model.safetensors")
    out = {}
    for name, value in tensors.items():
        out[name] = value
        if name.startswith("model.layers."):
            i = int(name.split(".")[2])
            out[name.replace(f"model.layers.{i}.", f"model.layers.{i + n}.", 1)] = value
    del tensors
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, dst / "model.safetensors")
    config["num_hidden_layers"] = 2 * n
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)


def bench(folder: Path, quant: str, label: str) -> None:
    largest, total = largest_tensor_mb(folder)
    bound = 3 * largest + 300
    with tempfile.TemporaryDirectory() as tmp:
        ours = peak_rss_of(CONVERT, str(folder), str(Path(tmp) / "out.apr"), quant)
    naive = peak_rss_of(NAIVE, str(next(folder.glob("*.safetensors"))))
    verdict = "OK" if ours <= bound else "OVER"
    print(f"{label:<28} {total:>9.0f} {largest:>9.0f} {bound:>9.0f} {ours:>12.0f} {naive:>12.0f}  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/derived/SmolLM2-135M-Instruct")
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--double", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.double:  # runs in a child: a fork inherits the parent's peak RSS, which would skew it
        doubled_model(*args.double)
        return 0
    if not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model}: not found (run `make models` first)")
    print(f"peak RSS in MB, convert --quant {args.quant}; bound = 3 x largest tensor + 300")
    print(f"{'model':<28} {'fp32 MB':>9} {'largest':>9} {'bound':>9} {'apr-qa peak':>12} {'load_file':>12}")
    bench(args.model, args.quant, args.model.name)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / f"{args.model.name}-x2"
        subprocess.run([sys.executable, __file__, "--double", str(args.model), str(big)], check=True)
        bench(big, args.quant, big.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
