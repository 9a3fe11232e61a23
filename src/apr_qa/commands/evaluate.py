"""`apr-qa eval`: the evaluation protocol (spec section 7) with gates T1-T5 and invariants I-1, I-5."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model against its reference (accuracy, latency, logit consistency)")
    p.add_argument("model", type=Path, help="the model: a .apr file, or a source folder / .gguf")
    p.add_argument("--reference", type=Path, required=True,
                   help="the original weights (folder or .gguf), run at float32 in the same runtime")
    p.add_argument("--prompts", type=Path, required=True, help="golden prompt YAML (config/prompts/golden-v1.yaml)")
    p.add_argument("--json", type=Path, required=True, help="evaluation JSON to write")
    p.add_argument("--runs", type=int, default=5, help="runs per prompt, seeds SEED..SEED+RUNS-1 (default 5)")
    p.add_argument("--seed", type=int, default=42, help="seed of run 0 (default 42)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="compute dtype of the evaluated model (the reference always runs float32)")
    p.add_argument("--weights", choices=["packed", "dequantized"], default="packed",
                   help="quantized variants: 'packed' (default) runs Q8_0/Q4_0/Q4_K/Q6_K matrices from their blocks, "
                        "as a user would; 'dequantized' turns them into floats at load (the reference is always "
                        "dequantized)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per sampled run (default 32)")
    p.add_argument("--greedy-tokens", type=int, default=32,
                   help="length of the greedy generations compared for invariant I-1 (default 32)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per prompt, gate T2 (default 30)")
    p.add_argument("--min-cosine", type=float,
                   help="encoders: minimum cosine vs the reference (default depends on the quantization level)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.prompts import load_golden
    from ..evaluation.protocol import EvalOptions
    from ..evaluation.report_json import build_report, summary_lines, utc_now, write_report
    from ..evaluation.runner import evaluate
    from ..evidence import exit_code

    golden = load_golden(args.prompts)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = EvalOptions(runs=args.runs, seed=args.seed, max_new_tokens=args.max_new_tokens,
                       greedy_tokens=args.greedy_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       timeout_s=args.timeout, min_cosine=args.min_cosine)
    started, t0 = utc_now(), time.perf_counter()
    ev = evaluate(args.model, args.reference, golden, opts, device=args.device, dtype=args.dtype,
                  weights=args.weights)
    report = build_report(ev, golden, opts, args.device, started, utc_now(), time.perf_counter() - t0)
    write_report(args.json, report)
    for line in summary_lines(report, ev.gates):
        print(line, file=sys.stderr)
    return exit_code(ev.gates)
