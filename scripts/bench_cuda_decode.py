#!/usr/bin/env python
"""CUDA decode speed: our eager decode loop, our static steps replayed as CUDA graphs, and
transformers' eager generate, interleaved, on a TinyLlama-1.1B-shaped llama (random weights: speed
does not depend on their values) in bfloat16. With --packed, also ours on its q8_0 and q4_0 .apr
variants (packed weights dequantized per matmul on the GPU).

Decode tokens/s = (N - 1) / (t_N - t_1) for greedy generations of N and 1 new tokens (EOS ignored),
median of interleaved rounds. Without a CUDA device it prints that the figures are unmeasured.

    .venv/bin/python scripts/bench_cuda_decode.py [--tokens 128] [--repeats 5] [--packed] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# TinyLlama-1.1B's shape
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
          "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
          "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}


def make_model(folder: Path) -> Path:
    """The random 1.1B llama as a SafeTensors folder with a byte-level tokenizer (once)."""
    if (folder / "model.safetensors").exists():
        return folder
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
    from tiny_models import train_byte_level_bpe, write_json

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    write_json(folder / "config.json", {**CONFIG, "torch_dtype": "bfloat16"})
    train_byte_level_bpe().save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False})
    return folder


def rate(generate, n: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    generate(1)
    torch.cuda.synchronize()
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    generate(n)
    torch.cuda.synchronize()
    return (n - 1) / (time.perf_counter() - t - t1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "apr-qa-cuda-bench")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: the CUDA decode figures are unmeasured")
        return 0
    from transformers import AutoModelForCausalLM

    from apr_qa.runtime import load_model

    folder = make_model(args.workdir / "llama-1.1b")
    ours = load_model(folder, device="cuda", dtype=torch.bfloat16)
    ids = list(range(10, 42))
    engines = {
        "apr-qa eager": lambda k: ours.generate([ids], k, stop_on_eos=False, static_steps=False),
        "apr-qa CUDA graphs": lambda k: ours.generate([ids], k, stop_on_eos=False),
    }
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
    inputs = torch.tensor([ids], device="cuda")

    @torch.inference_mode()
    def transformers_generate(k):
        return reference.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=k, min_new_tokens=k,
                                  do_sample=False, pad_token_id=0)

    engines["transformers eager"] = transformers_generate
    if args.packed:
        from apr_qa.convert import convert

        for quant in ("q8_0", "q4_0"):
            path = args.workdir / f"llama-1.1b.{quant}.apr"
            if not path.exists():
                convert(folder, path, quant)
            model = load_model(path, device="cuda", dtype=torch.bfloat16)
            engines[f"apr-qa {quant} packed, graphs"] = lambda k, m=model: m.generate([ids], k, stop_on_eos=False)
    for generate in engines.values():
        generate(4)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            rates[name].append(rate(engines[name], args.tokens))
    print(f"{torch.cuda.get_device_name()}: TinyLlama-1.1B-shaped llama, bfloat16, {args.tokens} new tokens, "
          f"median of {args.repeats} interleaved rounds")
    base = statistics.median(rates["transformers eager"])
    for name in names:
        med = statistics.median(rates[name])
        runs = " ".join(f"{r:.1f}" for r in rates[name])
        print(f"{name:<32}{med:>10.1f} tok/s  {med / base:5.2f}x transformers   {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
