"""`apr-qa export-gguf`: a .apr model written back as a GGUF file llama.cpp loads."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-gguf", help="write a .apr model as a GGUF file llama.cpp loads (tensors, "
                                           "quantized blocks, tokenizer)")
    p.add_argument("model", type=Path, help="the .apr file")
    p.add_argument("output", type=Path, help="the .gguf file to write")
    p.add_argument("--reencode", choices=["q8_0", "f16"], default="q8_0",
                   help="type for block-quantized tensors whose rows the .apr pads to whole blocks, which GGUF "
                        "cannot hold (default q8_0; f16 where rows are not whole 32-value blocks)")
    p.add_argument("--json", type=Path, help="write an export summary JSON here")
    p.set_defaults(func=cmd_export_gguf)


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from ..gguf_export import export_gguf

    result = export_gguf(args.model, args.output, args.reencode)
    size = result.output.stat().st_size
    for note in result.notes:
        print(f"apr-qa export-gguf: warning: {note}", file=sys.stderr)
    if args.json:
        from ..fsutil import write_text_atomic

        summary = {"output": str(result.output), "architecture": result.architecture, "tensors": result.tensor_count,
                   "size_bytes": size, "dtype_counts": result.dtype_counts, "reencoded": result.reencoded,
                   "notes": result.notes, "seconds": round(result.seconds, 3)}
        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    dtypes = ", ".join(f"{n} {k}" for k, n in sorted(result.dtype_counts.items()))
    print(f"{result.output}: {result.architecture} GGUF, {result.tensor_count} tensors ({dtypes}), "
          f"{size / 1e6:.1f} MB, {result.seconds:.1f} s", file=sys.stderr)
    return 0
