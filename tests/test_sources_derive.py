"""scripts/derive_hf_from_gguf.py on the tiny GGUF: deterministic, atomic, readable by transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_derive_script_is_deterministic_and_loads(tiny_llama, tiny_gguf, tmp_path):
    """On the tiny GGUF: two runs give identical bytes, and transformers reads the result back as
    the original HF model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    script = ROOT / "scripts/derive_hf_from_gguf.py"
    outs = [tmp_path / "a" / "m", tmp_path / "b" / "m"]
    for out in outs:
        subprocess.run([sys.executable, str(script), str(tiny_gguf("F32")), str(out)], check=True,
                       capture_output=True)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    assert all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files)
    assert not (tmp_path / "a" / "m.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(outs[0], dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    a, b = model.state_dict(), original.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    tok = AutoTokenizer.from_pretrained(outs[0])
    original_tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert tok("Hello world 42")["input_ids"] == original_tok("Hello world 42")["input_ids"]
    assert json.loads((outs[0] / "config.json").read_text())["num_key_value_heads"] == 2


def test_derive_script_refuses_bad_input(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(10))
    r = subprocess.run([sys.executable, str(ROOT / "scripts/derive_hf_from_gguf.py"), str(bad), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
