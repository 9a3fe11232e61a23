"""`apr-qa diff-stacks`: two stacks' evaluations of the same model file, compared per token (gate X1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff-stacks",
                       help="compare two stacks' per-token logits on identical weights (KLD, same top-1)")
    p.add_argument("first", type=Path, help="evaluation JSON of the first stack (the KLD's reference side)")
    p.add_argument("second", type=Path, help="evaluation JSON of the second stack, same model file")
    p.add_argument("--out", type=Path, required=True, help="differential JSON to write")
    p.set_defaults(func=cmd_diff_stacks)


def cmd_diff_stacks(args: argparse.Namespace) -> int:
    from ..evidence import jsonable
    from ..fsutil import write_text_atomic
    from ..stacks.differential import compare_stacks, summary_line

    record = compare_stacks(args.first, args.second)
    write_text_atomic(args.out, json.dumps(record, indent=2, allow_nan=False, default=jsonable) + "\n")
    print(summary_line(record), file=sys.stderr)
    return 0  # X1 is a warning: the record and the report carry it
