"""`apr-qa convert`, `apr-qa architectures`, `apr-qa inspect`, `apr-qa validate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..dtypes import QUANT_LEVELS
from ..errors import AprQaError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a SafeTensors folder, GGUF or (opted-in) PyTorch model to .apr")
    p.add_argument("source", type=Path, help="model folder (config.json + *.safetensors) or .gguf file")
    p.add_argument("output", type=Path, help="the .apr file to write")
    p.add_argument("--quant", choices=list(QUANT_LEVELS), default="f16", help="weight dtype (default f16)")
    p.add_argument("--manifest", type=Path, help="download manifest JSON (repo, commit) recorded as provenance")
    p.add_argument("--unsafe-allow-pickle", action="store_true",
                   help="allow PyTorch .bin/.pt sources (loaded with torch.load(weights_only=True))")
    p.add_argument("--json", type=Path, help="write a conversion summary JSON here")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("architectures", help="list the model families the stack supports (Markdown table)")
    p.set_defaults(func=cmd_architectures)

    p = sub.add_parser("inspect", help="show a .apr file's header, metadata and tensor table")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="run every conversion gate of a .apr against its source")
    p.add_argument("file", type=Path, help="the .apr file")
    p.add_argument("--source", type=Path, required=True, help="the model it was converted from")
    p.add_argument("--json", type=Path, required=True, help="evidence JSON to write (one record per gate)")
    p.add_argument("--tolerances", type=Path, help="YAML overriding per-dtype tolerances and gate levels")
    p.add_argument("--subject", help="name used in failure lines (default: the file name)")
    p.add_argument("--unsafe-allow-pickle", action="store_true")
    p.set_defaults(func=cmd_validate)


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from ..convert import convert

    # The quantizers' torch steps are tens of microseconds each: a second thread only adds
    # synchronisation (measured slower with 2 threads on a busy 2-core machine).
    torch.set_num_threads(1)

    manifest = None
    if args.manifest:
        try:
            manifest = json.loads(args.manifest.read_text())
        except (OSError, ValueError) as exc:
            raise AprQaError(f"cannot read manifest: {exc}", args.manifest) from None
    result = convert(args.source, args.output, args.quant, allow_pickle=args.unsafe_allow_pickle, manifest=manifest)
    size_bytes = result.output.stat().st_size
    summary = {
        "output": str(result.output), "quant": result.quant, "tensors": result.tensor_count,
        "param_count": result.param_count, "seconds": round(result.seconds, 3),
        "size_bytes": size_bytes, "dtype_counts": result.dtype_counts, "notes": result.notes,
    }
    if args.json:
        from ..fsutil import write_text_atomic

        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    print(f"{result.output}: {result.tensor_count} tensors, {result.param_count:,} parameters, "
          f"{size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s", file=sys.stderr)
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    from ..arch import families

    print("| family | HF architectures | model types | GGUF arch | kind |\n|---|---|---|---|---|")
    for family in families():
        gguf_name = family.gguf_name_of_arch() or "-"
        print(f"| {family.family} | {', '.join(family.hf_names)} | {', '.join(family.model_types)} | {gguf_name} "
              f"| {family.kind} |")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..apr import AprReader
    from ..inspect import describe, format_text

    with AprReader(args.file) as reader:
        desc = describe(reader)
    text = json.dumps(desc, indent=2) if args.json else format_text(desc).rstrip("\n")
    try:
        print(text)
    except BrokenPipeError:  # `apr-qa inspect X | head` is normal use
        sys.stderr.close()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ..evidence import exit_code, failure_lines, write_evidence
    from ..validate import ValidationConfig, validate

    config = ValidationConfig.load(args.tolerances, allow_pickle=args.unsafe_allow_pickle)
    records = validate(args.file, args.source, config)
    subject = args.subject or args.file.name
    write_evidence(args.json, records, stage="validate", subject=subject, apr=str(args.file), source=str(args.source))
    for line in failure_lines(records, subject):
        print(line, file=sys.stderr)
    passed = sum(r.passed for r in records)
    print(f"{subject}: {passed}/{len(records)} gates passed", file=sys.stderr)
    return exit_code(records)
