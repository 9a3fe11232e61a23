"""`apr-qa run` (one prompt), `apr-qa embed` (encoder vectors) and `apr-qa chat` (multi-turn REPL) on our
PyTorch runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UnsupportedError


def _model_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("model", help=".apr file, HF model folder, .safetensors or .gguf file")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    _weights_option(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="packed", choices=["packed", "dequantized"],
                        help="quantized variants: 'packed' (default) multiplies Q8_0/Q4_0/Q4_K/Q6_K matrices straight "
                             "from their blocks; 'dequantized' turns them into --dtype floats at load")


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="generate text from a prompt (encoders: print the embedding)",
                         description="Print only the generated text on stdout. For an encoder model, print the "
                                     "prompt's mean-pooled embedding: its size, L2 norm and first values.")
    _model_options(run, 64)
    run.add_argument("prompt")
    run.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    run.set_defaults(func=cmd_run)

    embed = sub.add_parser("embed", help="embed texts with an encoder model (one vector per text, as JSON)",
                           description="Pools the last hidden states over each text's real tokens with the model's "
                                       "pooling (a sentence-transformers 1_Pooling/config.json beside the weights, "
                                       "recorded in the .apr; mean pooling when there is none). Prints "
                                       '{"embeddings": [[...], ...]} unless --json names a file.')
    embed.add_argument("model", help=".apr file, HF model folder, .safetensors or .gguf file")
    embed.add_argument("texts", nargs="+", metavar="TEXT")
    embed.add_argument("--json", type=Path, help="write the JSON here instead of printing it")
    embed.add_argument("--normalize", action="store_true", help="L2-normalize each vector")
    embed.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    embed.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    _weights_option(embed)
    embed.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    embed.set_defaults(func=cmd_embed)

    chat = sub.add_parser("chat", help="interactive multi-turn chat using the model's chat template",
                          description="Reads one user message per stdin line (works with a pipe); EOF ends.")
    _model_options(chat, 256)
    chat.add_argument("--system", default=None, help="system message to start the conversation with")
    chat.set_defaults(func=cmd_chat)


def _load(args):
    import torch

    from ..runtime import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, device=args.device, dtype=args.dtype, weights=args.weights)


def _sampling(args) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}


def cmd_run(args: argparse.Namespace) -> int:
    model = _load(args)
    if model.kind == "encoder":
        vector = model.embed([args.prompt])[0]
        first = ", ".join(f"{v:.6f}" for v in vector[:8].tolist())
        print(f"encoder embedding ({model.pooling} pooled): dim {vector.numel()}, L2 norm {vector.norm().item():.6f}, "
              f"first values [{first}]")
        return 0
    prompt = args.prompt
    if args.chat:
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    out = model.generate([prompt], args.max_new_tokens, **_sampling(args))[0]
    print(out.text)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import json

    from ..fsutil import write_text_atomic

    model = _load(args)
    if model.kind != "encoder":
        raise UnsupportedError("embed needs an encoder (embedding) model; use run for text generation", args.model)
    vectors = model.embed(args.texts, normalize=args.normalize)
    text = json.dumps({"model": str(args.model), "pooling": model.pooling, "normalized": args.normalize,
                       "embeddings": vectors.tolist()})
    if args.json:
        write_text_atomic(args.json, text + "\n")
    else:
        print(text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = _load(args)
    if model.kind != "decoder":
        raise UnsupportedError("chat needs a decoder (text generation) model", args.model)
    if model.tokenizer.chat_template is None:  # fail now, not after the first message
        raise UnsupportedError("the model has no chat template (tokenizer_config chat_template)", args.model)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        prompt = model.tokenizer.apply_chat_template(messages)
        reply = model.generate([prompt], args.max_new_tokens, **_sampling(args))[0].text.strip()
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
