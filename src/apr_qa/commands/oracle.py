"""`apr-qa oracle`: check our runtime against transformers on a source model (test-time dependency)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oracle", help="compare our fp32 runtime with HuggingFace transformers on a source model")
    p.add_argument("source", type=Path, help="model folder or .gguf")
    p.add_argument("--prompts", type=Path, required=True, help="golden prompt YAML; its inputs are the texts compared")
    p.add_argument("--json", type=Path, required=True, help="oracle record to write")
    p.add_argument("--record-only", action="store_true",
                   help="exit 0 after writing a disagreement (the workflow's report shows it)")
    p.set_defaults(func=cmd_oracle)


def cmd_oracle(args: argparse.Namespace) -> int:
    from ..evaluation.oracle import run_oracle
    from ..evaluation.prompts import load_golden
    from ..fsutil import write_text_atomic

    golden = load_golden(args.prompts)
    record = run_oracle(args.source, [p.input for p in golden.prompts])
    record["prompts_sha256"] = golden.sha256
    write_text_atomic(args.json, json.dumps(record, indent=2) + "\n")
    print(f"{args.source}: oracle {record['status']}"
          + (f", max relative diff {record['max_relative_diff']:.2e}" if record["passed"] is not None else
             f" ({record['reason']})"), file=sys.stderr)
    return 1 if record["passed"] is False and not args.record_only else 0
