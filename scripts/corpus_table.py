#!/usr/bin/env python3
"""The corpus table of the README: each variant of a model scored on the corpus (docs/corpus.md) in our
runtime and in llama.cpp (the llamacpp stack, on the GGUF exported from the same .apr), side by side.

    python scripts/corpus_table.py SOURCE --reference REF.npz --variants q8_0,q4_0 [--work DIR]
    python scripts/corpus_table.py --results results --model smollm2-135m   # from a finished workflow run

REF.npz comes from `apr-qa corpus-reference SOURCE ...`. Prints one Markdown row per variant and stack:
PPL, ln(PPL ratio) +- its 95 % half-width, mean KLD, KLD p99, same top-1, accuracy ratio and Q1's verdict.
With --results the rows are read from the workflow's evaluations (every stack it ran), nothing is recomputed.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from apr_qa.convert import convert
from apr_qa.evaluation import corpus, corpus_gates


HEADER = ("| variant | stack | PPL | ln(PPL ratio) | mean KLD | KLD p99 | same top-1 | accuracy vs reference | Q1 |\n"
          "|---|---|---|---|---|---|---|---|---|")


def _format(variant: str, stack: str, summary: dict, verdict: str) -> str:
    ln, kld, top1, acc = (summary[k] for k in ("ln_ppl_ratio", "kld", "same_top1", "next_token_accuracy"))
    return (f"| {variant} | {stack} | {summary['ppl']:.3f} | {ln['value']:+.4f} ± {ln['resolution']:.4f} | "
            f"{kld['mean']:.4g} ± {kld['resolution']:.2g} | {kld['p99']:.3g} | {100 * top1['rate']:.2f} % | "
            f"{100 * acc['value']:.2f} % [{100 * acc['ci_low']:.2f}, {100 * acc['ci_high']:.2f}] | {verdict} |")


def _row(variant: str, stack: str, ref: corpus.Reference, model, seconds: list[float]) -> str:
    t0 = time.perf_counter()
    summary = {"name": ref.meta["corpus"], **corpus.summarize(corpus.score(model, ref))}
    seconds.append(time.perf_counter() - t0)
    q1 = corpus_gates.gate_q1(summary, corpus_gates.quality_target(variant))
    return _format(variant, stack, summary, q1.details["verdict"])


def _from_results(results: Path, model: str) -> int:
    from apr_qa.dtypes import QUANT_LEVELS
    from apr_qa.report.corpus import corpus_rows

    rows = [r for r in corpus_rows(results, [model], list(QUANT_LEVELS)) if "kld" in r["corpus"]]
    if not rows:
        raise SystemExit(f"corpus_table: {results}: no decoder evaluation of {model} scored the corpus")
    c = rows[0]["corpus"]
    print(f"corpus {c['name']}: {c.get('chunks', '?')} windows of {c.get('n_ctx', '?')}, {c['tokens_scored']} scored "
          f"tokens; reference PPL {c['ppl_reference']:.3f}")
    print(HEADER)
    for r in rows:
        verdict = ((r["q1"] or {}).get("details") or {}).get("verdict", "-")
        print(_format(r["variant"], "llama.cpp" if r["stack"] == "llamacpp" else r["stack"], r["corpus"], verdict))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="?")
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--results", type=Path, help="read the rows from a workflow's results folder instead")
    parser.add_argument("--model", help="with --results: the model id")
    parser.add_argument("--variants", default="f16,q8_0,q4_k_m,q4_k,q4_0")
    parser.add_argument("--work", type=Path, help="folder for the .apr files (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.results:
        if not args.model:
            parser.error("--results needs --model")
        return _from_results(args.results, args.model)
    if not (args.source and args.reference):
        parser.error("give SOURCE and --reference (or --results and --model)")

    import torch

    from apr_qa.runtime import load_model
    from apr_qa.stacks import llamacpp
    from apr_qa.stacks.adapter import harness_tokenizer

    torch.set_num_threads(args.threads)
    ref = corpus.read_reference(args.reference)
    work = args.work or Path(tempfile.mkdtemp(prefix="corpus-table-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"corpus {ref.meta['corpus']}: {ref.meta['chunks']} windows of {ref.n_ctx}, "
          f"{ref.topk_ids.shape[0] * ref.topk_ids.shape[1]} scored tokens; reference PPL "
          f"{math.exp(float(-ref.token_logp.mean())):.3f}; llama.cpp build: {llamacpp.build_features()}")
    print(HEADER)
    for variant in args.variants.split(","):
        apr = work / f"{args.source.name}.{variant}.apr"
        if not apr.exists():
            convert(args.source, apr, variant)
        seconds: list[float] = []
        print(_row(variant, "builtin", ref, load_model(apr), seconds), flush=True)
        gguf, _ = llamacpp.export_for_stack(apr, work)
        tokenizer, config = harness_tokenizer(apr)
        model = llamacpp.LlamaCppModel("llamacpp", gguf, tokenizer, config, ref.n_ctx, args.threads, {})
        print(_row(variant, "llama.cpp", ref, model, seconds), flush=True)
        model.close()
        print(f"<!-- {variant}: builtin {seconds[0]:.0f} s, llama.cpp {seconds[1]:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
