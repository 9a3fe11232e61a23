"""`apr-qa eval`: the evaluation protocol (seeded runs, statistics, logit consistency) with gates
T1-T5 and invariants I-1, I-5."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model against its reference (accuracy, latency, logit consistency)")
    p.add_argument("model", type=Path, help="the model: a .apr file, or a source folder / .gguf")
    p.add_argument("--reference", type=Path, required=True,
                   help="the model's golden reference (.npz from `apr-qa golden-reference`), or the original "
                        "weights (folder or .gguf), from which one is built first at float32")
    p.add_argument("--prompts", type=Path, required=True, help="golden prompt YAML (config/prompts/golden-v1.yaml)")
    p.add_argument("--json", type=Path, required=True, help="evaluation JSON to write")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="compute dtype of the evaluated model (the reference always runs float32)")
    p.add_argument("--weights", choices=["packed", "dequantized"], default="packed",
                   help="quantized variants: 'packed' (default) runs Q8_0/Q4_0/Q4_K/Q6_K matrices from their blocks, "
                        "as a user would; 'dequantized' turns them into floats at load (the reference is always "
                        "dequantized)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    _run_options(p)
    p.add_argument("--min-cosine", type=float,
                   help="encoders: minimum cosine vs the reference (default depends on the quantization level)")
    p.add_argument("--stack", default="builtin",
                   help="the stack that runs the model (docs/stacks.md): builtin (default), llamacpp, or a stack "
                        "specification as JSON, e.g. '{\"name\": \"rt\", \"kind\": \"command\", \"argv\": [\"rt\"]}'")
    p.add_argument("--variant", help="the variant name, for the stack's fingerprint in the JSON (default: the "
                                     "model's quantization level)")
    p.add_argument("--logits", type=Path,
                   help="also write the model's per-token logits on the prompts (.npz) for `apr-qa diff-stacks`")
    p.add_argument("--corpus-reference", type=Path,
                   help="decoders: also score the model on the corpus of this reference file (`apr-qa "
                        "corpus-reference`): KLD, perplexity ratio, same top-1, gate Q1 (docs/corpus.md)")
    p.add_argument("--quality-target", type=float,
                   help="gate Q1's target as a share of the reference's accuracy, e.g. 0.999 (default: 0.999 for "
                        "16-bit levels, 0.99 for quantized ones; a higher level's own target is never lowered)")
    p.set_defaults(func=cmd_eval)

    g = sub.add_parser("golden-reference",
                       help="run a model's reference weights over the golden prompts once; every variant's "
                            "evaluation reads it (apr-qa eval --reference FILE)")
    g.add_argument("source", type=Path, help="the original weights (folder or .gguf), run at float32")
    g.add_argument("--prompts", type=Path, required=True, help="golden prompt YAML")
    g.add_argument("--out", type=Path, required=True, help="the reference file to write (.npz)")
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    _run_options(g)
    g.set_defaults(func=cmd_golden_reference)

    r = sub.add_parser("corpus-reference",
                       help="run a model's reference weights over a corpus once; every variant's evaluation reads it")
    r.add_argument("source", type=Path, help="the original weights (folder or .gguf), run at float32")
    r.add_argument("--corpus", type=Path, required=True, help="corpus definition (config/corpus/wiki-en-v1.yaml)")
    r.add_argument("--out", type=Path, required=True, help="the reference file to write (.npz)")
    r.add_argument("--tokens", type=int, default=16384, help="at least this many scored tokens (default 16384)")
    r.add_argument("--n-ctx", type=int, default=512,
                   help="window length in tokens, the second half of each scored (default 512, as llama.cpp's "
                        "published KLD tables; capped at the model's context)")
    r.add_argument("--top-k", type=int, default=256, help="reference log-probs kept per position (default 256)")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    r.set_defaults(func=cmd_corpus_reference)


def _run_options(p: argparse.ArgumentParser) -> None:
    """The run options a golden reference and the evaluations that read it must share."""
    p.add_argument("--runs", type=int, default=5, help="runs per prompt, seeds SEED..SEED+RUNS-1 (default 5)")
    p.add_argument("--seed", type=int, default=42, help="seed of run 0 (default 42)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per sampled run (default 32)")
    p.add_argument("--greedy-tokens", type=int, default=32,
                   help="length of the greedy generations compared for invariant I-1 (default 32)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per prompt, gate T2 (default 30)")


def _options(args: argparse.Namespace, **extra):
    from ..evaluation.protocol import EvalOptions

    return EvalOptions(runs=args.runs, seed=args.seed, max_new_tokens=args.max_new_tokens,
                       greedy_tokens=args.greedy_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, timeout_s=args.timeout, **extra)


def cmd_golden_reference(args: argparse.Namespace) -> int:
    import torch

    from ..errors import AprQaError
    from ..evaluation import golden_reference
    from ..evaluation.prompts import load_golden

    if args.runs < 1:
        raise AprQaError(f"--runs must be at least 1, got {args.runs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    golden = load_golden(args.prompts)
    t0 = time.perf_counter()
    ref = golden_reference.build_from_source(args.source, golden, _options(args), args.device)
    golden_reference.write(ref, args.out)
    what = (f"{len(golden.prompts)} prompts x {args.runs} runs, greedy pass, top-{ref.meta['top_k']} log-probs"
            if ref.kind == "decoder" else f"{len(ref.embeddings or {})} texts embedded")
    print(f"apr-qa golden-reference: {args.source}: {golden.path.name}, {what}, {time.perf_counter() - t0:.1f} s "
          f"-> {args.out}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.prompts import load_golden
    from ..evaluation.report_json import build_report, summary_lines, utc_now, write_report
    from ..errors import AprQaError
    from ..evidence import exit_code
    from ..stacks import StackSpec
    from ..stacks.evaluation import evaluate_on_stack, greedy_sampling_block

    spec = StackSpec.parse(args.stack, "--stack")
    golden = load_golden(args.prompts)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = _options(args, min_cosine=args.min_cosine,
                    corpus_reference=str(args.corpus_reference) if args.corpus_reference else None,
                    quality_target=args.quality_target)
    started, t0 = utc_now(), time.perf_counter()
    ev, opts, stack = evaluate_on_stack(spec, args.model, args.reference, golden, opts, device=args.device,
                                        dtype=args.dtype, weights=args.weights, threads=args.threads,
                                        variant=args.variant or _level(args.model))
    if ev is None:  # a model the stack does not run (an encoder on llama.cpp): said so, exit 0
        return _not_applicable(args, stack, started)
    if args.logits is not None:  # empty for an encoder, or a stack that returns top logits or none
        from ..stacks.logits_file import write_logits

        logits = ([p.id for p in golden.prompts], *ev.prompt_logits) if ev.prompt_logits else ([], [], [])
        stack["logits"] = write_logits(args.logits, *logits)
    report = build_report(ev, golden, opts, args.device, started, utc_now(), time.perf_counter() - t0)
    report["stack"] = stack
    if spec.kind != "builtin" and report["sampling"]:
        report["sampling"] = greedy_sampling_block(opts)
    try:
        write_report(args.json, report)
    except AprQaError:
        if args.logits is not None:  # no partial output: the logits belong to the JSON that failed
            args.logits.unlink(missing_ok=True)
        raise
    for line in summary_lines(report, ev.gates):
        print(line, file=sys.stderr)
    return exit_code(ev.gates)


def cmd_corpus_reference(args: argparse.Namespace) -> int:
    import torch

    from ..errors import AprQaError
    from ..evaluation import corpus
    from ..evaluation.corpus_text import load_corpus
    from ..runtime import describe_weights
    from ..runtime import load_model

    if args.tokens < 1 or args.top_k < 1:
        raise AprQaError("--tokens and --top-k must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    definition = load_corpus(args.corpus)
    model = load_model(args.source, dtype=torch.float32, weights="dequantized")
    about = {"model": str(args.source), "model_sha256": describe_weights(args.source)["sha256"]}
    t0 = time.perf_counter()
    if model.kind == "decoder":
        ref = corpus.build_reference(model, definition, tokens=args.tokens, n_ctx=args.n_ctx, top_k=args.top_k,
                                     about=about)
        m = ref.meta
        what = (f"{m['chunks']} windows of {m['n_ctx']} tokens, {m['chunks'] * m['scored_per_chunk']} scored, "
                f"top-{m['top_k']} kept")
    else:
        ref = corpus.build_encoder_reference(model, definition, tokens=args.tokens, about=about)
        what = f"{ref.meta['texts']} first sentences embedded"
    corpus.write_reference(ref, args.out)
    print(f"apr-qa corpus-reference: {args.source}: {definition.name}, {what}, {time.perf_counter() - t0:.1f} s "
          f"-> {args.out}", file=sys.stderr)
    return 0


def _level(model: Path) -> str | None:
    """The .apr's quantization level (its variant name in the workflow), None for a source."""
    if model.suffix != ".apr":
        return None
    from ..apr import AprReader

    with AprReader(model) as reader:
        return (reader.metadata.get("quantization") or {}).get("level")


def _not_applicable(args: argparse.Namespace, stack: dict, started: str) -> int:
    from ..evaluation.report_json import utc_now, write_report
    from ..stacks.evaluation import not_applicable_report
    from ..stacks.logits_file import write_logits

    if args.logits is not None:  # an empty logits file: the workflow's rule expects one
        stack["logits"] = write_logits(args.logits, [], [], [])
    write_report(args.json, not_applicable_report(args.model, stack, started, utc_now()))
    print(f"apr-qa eval: {args.model}: not evaluated on stack {stack['name']}: {stack['not_applicable']}",
          file=sys.stderr)
    return 0
