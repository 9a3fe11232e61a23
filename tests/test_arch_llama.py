"""The llama family (Llama/TinyLlama with every rope scaling, Mistral's sliding window, Qwen2's
biases) through the architecture registry: against transformers, through every variant's gates,
and from GGUF."""

from __future__ import annotations

import json

import pytest

import family_harness as fh
import tiny_models

FORMS = {
    "mistral_window": {"model_type": "mistral", "sliding_window": 8},
    "qwen2": {"model_type": "qwen2", "use_sliding_window": False},
    "rope_linear": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    # max_position_embeddings 256 -> 24 makes a 32-token continuation pass the trained length
    "rope_dynamic": {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 24},
    "rope_llama3": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "mqa": {"num_kv_heads": 1},
}


def _make(tiny_dir, form: str):
    return tiny_models.once(tiny_dir / f"llama_{form}", lambda p: tiny_models.make_tiny_llama(p, **FORMS[form]))


@pytest.mark.parametrize("form", [None, *FORMS])
def test_matches_transformers(form, tiny_llama, tiny_dir, tmp_path):
    hf_dir = tiny_llama if form is None else _make(tiny_dir, form)
    figures = fh.decoder_matches_transformers(hf_dir, tmp_path, new_tokens=24 if form == "rope_dynamic" else 32)
    assert figures["greedy_identical"] == len(fh.PROMPTS)


@pytest.mark.parametrize("form", [None, "qwen2"])
def test_variants_pass_gates(form, tiny_llama, tiny_dir, tmp_path):
    fh.variants_pass_gates(tiny_llama if form is None else _make(tiny_dir, form), tmp_path)


def test_llama_gguf_reads_back(tiny_llama, tiny_gguf):
    fh.gguf_reads_back(tiny_llama, tiny_gguf("F32"))


@pytest.mark.parametrize("form", ["qwen2", "mqa", "mistral_window"])
def test_gguf_reads_back(form, tiny_dir, tmp_path):
    """Qwen2 GGUFs keep Q/K rows as they are (and carry QKV biases); llama's are permuted, with the
    single KV head for K under MQA. Mistral is written as a llama GGUF (its window is not recorded)."""
    hf_dir = _make(tiny_dir, form)
    gguf_path = tiny_models.make_tiny_gguf(hf_dir, tmp_path / f"{form}.gguf")
    fh.gguf_reads_back(hf_dir, gguf_path)


def test_llama3_scaled_gguf_reads_back(tiny_dir, tmp_path):
    """llama.cpp keeps llama3 scaling only as the rope_freqs tensor (per-frequency divisors): read into
    the config, the GGUF runs to the HF model's logits, and a conversion carries the factors along."""
    from apr_qa.convert import convert
    from apr_qa.sources import open_source

    hf_dir = _make(tiny_dir, "rope_llama3")
    gguf_path = tiny_models.make_tiny_gguf(hf_dir, tmp_path / "llama3.gguf")
    fh.gguf_reads_back(hf_dir, gguf_path, differing_ok=("rope_scaling",))
    scaling = open_source(gguf_path).config["rope_scaling"]
    assert scaling["rope_type"] == "freq_factors" and max(scaling["freq_factors"]) == 8.0
    convert(gguf_path, tmp_path / "llama3.apr", "f32")
    from apr_qa.runtime import load_model

    ours, want = load_model(tmp_path / "llama3.apr"), load_model(hf_dir)
    ids = want.tokenizer.encode(fh.PROMPTS[1] * 4)  # long enough for the low frequencies to matter
    assert fh.relative_diff(ours.logits([ids])[0], want.logits([ids])[0]) <= fh.RELATIVE_LIMIT


def test_block_size_misfit_falls_back_to_f16(tiny_dir, tmp_path):
    """GQA 5:1 with head_dim 40: rows of 200 values are not whole 32-value blocks. q8_0 stores those
    matrices as F16 (llama.cpp's fallback), says so in the notes, and passes every gate."""
    from apr_qa.apr import AprReader
    from apr_qa.convert import convert

    hf_dir = tiny_models.once(tiny_dir / "llama_misfit", lambda p: tiny_models.make_tiny_llama(
        p, num_kv_heads=1, hidden=200, heads=5, head_dim=40))
    fh.decoder_matches_transformers(hf_dir, tmp_path)
    result = convert(hf_dir, tmp_path / "q8.apr", "q8_0")
    with AprReader(tmp_path / "q8.apr") as reader:
        dtypes = {e.name: e.dtype.name for e in reader.entries}
        notes = reader.metadata["conversion_notes"]
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "F16"   # rows of 200
    assert dtypes["model.layers.0.mlp.down_proj.weight"] == "Q8_0"     # rows of 128
    assert any("q_proj.weight: rows of 200 values" in n and "F16" in n for n in notes)
    assert result.notes == notes
    fh.variants_pass_gates(hf_dir, tmp_path, variants=("q8_0", "q4_0"))


def test_unsupported_architecture_fails_at_conversion(tiny_llama, tmp_path):
    import shutil

    from apr_qa.cli import main

    src = tmp_path / "gptj"
    shutil.copytree(tiny_llama, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPTJForCausalLM"], "model_type": "gptj"}))
    out = tmp_path / "x.apr"
    assert main(["convert", str(src), str(out), "--quant", "f32"]) == 2
    assert not out.exists()
