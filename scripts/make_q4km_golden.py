"""Record llama.cpp's Q4_K_M and Q6_K files of a tiny llama as golden data for tests/test_q4km_llamacpp.py.

The model: tests/helpers/tiny_models.make_tiny_llama with every matrix row a whole number of
256-value super-blocks (hidden 256, head_dim 64, feed-forward 512) and 8 layers, enough for
llama.cpp's "use more bits" layer pattern (0, 3, 6, 7) to show; once untied (output.weight
separate), once tied (the token embedding doubles as the output). `apr-qa convert --quant f32` then
`apr-qa export-gguf` give the f32 GGUF, and llama.cpp itself (`llama_model_quantize`, the function
behind its llama-quantize tool) quantizes it. Saved per file type and model: every tensor's GGUF
name, ggml type and sha256 of its bytes, plus the f32 GGUF's tensor hashes (so a change of the tiny
model shows as such, not as a quantizer difference).

Needs llama-cpp-python (not a project dependency):

    .venv/bin/pip install llama-cpp-python      # or any venv that also has apr-qa installed
    .venv/bin/python scripts/make_q4km_golden.py
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "q4km_llamacpp_golden.json"
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

# make_tiny_llama keywords of the two models (see the module docstring)
MODELS = {
    "untied": {"hidden": 256, "heads": 4, "head_dim": 64, "num_kv_heads": 2, "intermediate_size": 512,
               "num_hidden_layers": 8},
    "tied": {"hidden": 256, "heads": 4, "head_dim": 64, "num_kv_heads": 2, "intermediate_size": 512,
             "num_hidden_layers": 8, "tie_embeddings": True},
}
# our level -> llama.cpp file type (gguf.LlamaFileType member)
LEVELS = {"q4_k_m": "MOSTLY_Q4_K_M", "q6_k": "MOSTLY_Q6_K"}


def build_model(folder: Path, model: str) -> Path:
    import tiny_models

    return tiny_models.make_tiny_llama(folder, **MODELS[model])


def gguf_tensors(path: Path) -> dict[str, dict[str, str]]:
    """GGUF name -> {type, sha256} of every tensor of a GGUF file."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        out[t.name] = {"type": t.tensor_type.name, "sha256": hashlib.sha256(bytes(t.data)).hexdigest()}
    return dict(sorted(out.items()))


def export(hf_dir: Path, workdir: Path, level: str) -> Path:
    """Our .apr of `hf_dir` at `level`, exported as GGUF."""
    from apr_qa.convert import convert
    from apr_qa.gguf_export import export_gguf

    apr = workdir / f"{hf_dir.name}.{level}.apr"
    convert(hf_dir, apr, level)
    out = workdir / f"{hf_dir.name}.{level}.gguf"
    export_gguf(apr, out)
    return out


def llamacpp_quantize(src: Path, dst: Path, file_type: str) -> Path:
    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(gguf.LlamaFileType[file_type]), 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {src} to {file_type}")
    return dst


def llamacpp_build() -> str:
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def record(workdir: Path) -> dict:
    golden: dict = {"llama_cpp": llamacpp_build(), "models": {}}
    for model in MODELS:
        hf_dir = build_model(workdir / model, model)
        f32 = export(hf_dir, workdir, "f32")
        entry = {"make_tiny_llama": MODELS[model], "f32": gguf_tensors(f32)}
        for level, file_type in LEVELS.items():
            entry[level] = gguf_tensors(llamacpp_quantize(f32, workdir / f"{model}.{level}.llamacpp.gguf", file_type))
        golden["models"][model] = entry
    return golden


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="q4km-golden-") as tmp:
        golden = record(Path(tmp))
    args.out.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    counts = {m: {lv: sorted({t["type"] for t in e[lv].values()}) for lv in LEVELS}
              for m, e in golden["models"].items()}
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {golden['llama_cpp']}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
