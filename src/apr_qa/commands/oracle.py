"""`apr-qa oracle`: gate O1, our runtime against transformers on a source model (evaluation/oracle.py)."""

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
    p.set_defaults(func=cmd_oracle)


def cmd_oracle(args: argparse.Namespace) -> int:
    from ..evaluation.oracle import run_oracle
    from ..evaluation.prompts import load_golden
    from ..fsutil import write_text_atomic

    golden = load_golden(args.prompts)
    record = run_oracle(args.source, [p.input for p in golden.prompts])
    record["prompts_sha256"] = golden.sha256
    text = json.dumps(record, indent=2) + "\n"
    write_text_atomic(args.json, text)
    # a failed job's outputs are removed by Snakemake: the failure's record stays beside them for the report
    failed = args.json.with_suffix(".failed.json")
    if record["passed"] is False:
        write_text_atomic(failed, text)
    else:
        failed.unlink(missing_ok=True)
    if record["passed"] is False:
        print(f"gate O1 failed on {args.source}: our runtime vs transformers, max relative diff "
              f"{record['max_relative_diff']:.2e} (of the value range), expected <= {record['relative_limit']:g}: "
              "the runtime is wrong; no reference is computed from it", file=sys.stderr)
    else:
        print(f"{args.source}: oracle {record['status']}"
              + (f", max relative diff {record['max_relative_diff']:.2e}" if record["passed"] else
                 f" ({record['reason']})"), file=sys.stderr)
    return 1 if record["passed"] is False else 0
