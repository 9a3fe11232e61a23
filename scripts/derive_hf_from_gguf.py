#!/usr/bin/env python3
"""Derive a HuggingFace-layout folder (float32 SafeTensors) from a llama-family GGUF.

    derive_hf_from_gguf.py MODEL.gguf OUTDIR

Writes config.json, model.safetensors (float32, HF names, Q/K un-permuted), tokenizer.json,
tokenizer_config.json (with the chat template) and generation_config.json, all built from
apr_qa's GGUF source. Same input -> identical bytes (sorted keys, no timestamps). Atomic: the
folder is assembled as OUTDIR.tmp and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def _json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def derive(gguf_path: Path, out_dir: Path) -> None:
    from safetensors.numpy import save_file

    from apr_qa.sources.gguf_source import GGUFSource

    src = GGUFSource(gguf_path)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _json(tmp / "config.json", {**src.config, "torch_dtype": "float32"})
        save_file({t.name: src.load(t.name) for t in src.tensors()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        if src.tokenizer_json is not None:
            (tmp / "tokenizer.json").write_text(src.tokenizer_json, encoding="utf-8")
            _json(tmp / "tokenizer_config.json", src.tokenizer_config)
        _json(tmp / "generation_config.json",
              {k: src.config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in src.config})
        src.close()
        old = out_dir.with_name(out_dir.name + ".old")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for note in src.notes:
        print(f"note: {note}")
    print(f"wrote {out_dir} ({len(src.tensors())} tensors)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gguf", type=Path)
    p.add_argument("out_dir", type=Path)
    args = p.parse_args(argv)
    from apr_qa.errors import AprQaError

    try:
        derive(args.gguf, args.out_dir)
    except AprQaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
