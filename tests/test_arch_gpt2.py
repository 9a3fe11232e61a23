"""GPT-2 (GPT2LMHeadModel / GPT2Model) and StarCoder (GPTBigCodeForCausalLM, multi-query and
multi-head) through the architecture registry: against transformers, through every variant's gates,
and from GGUF files written as llama.cpp's converter writes them (arch gpt2 / starcoder).

What is particular to these families and proved here: GPT-2's Conv1D weights ([in, out] on disk)
made canonical [out, in]; the hub gpt2 layout (no "transformer." prefix, causal-mask buffers);
StarCoder's single K/V head and its per-head interleaved c_attn rows when multi-head."""

from __future__ import annotations

import json

import numpy as np
import pytest

import family_harness as fh
import tiny_gpt2
import tiny_models
from apr_qa.arch import architecture_for
from apr_qa.errors import FormatError, UnsupportedError

FORMS = {
    "gpt2": lambda p: tiny_gpt2.make_tiny_gpt2(p),
    # the hub's openai-community/gpt2 layout: unprefixed names plus attn.bias / attn.masked_bias buffers
    "gpt2_legacy": lambda p: tiny_gpt2.make_tiny_gpt2(p, legacy=True),
    "gpt2_base": lambda p: tiny_gpt2.make_tiny_gpt2(p, legacy=True, architecture="GPT2Model"),
    "gpt2_untied": lambda p: tiny_gpt2.make_tiny_gpt2(p, tied=False),
    "starcoder_mqa": lambda p: tiny_gpt2.make_tiny_starcoder(p),
    "starcoder_mha": lambda p: tiny_gpt2.make_tiny_starcoder(p, multi_query=False),
}
GGUF_FORMS = ("gpt2_legacy", "starcoder_mqa")


def _hf(tiny_dir, form: str):
    return tiny_models.once(tiny_dir / form, FORMS[form])


def _gguf(tiny_dir, form: str, qtype: str, output_copy: bool = False):
    hf_dir = _hf(tiny_dir, form)
    path = tiny_dir / f"{form}.{qtype}{'.output' if output_copy else ''}.gguf"
    return tiny_models.once(path, lambda p: tiny_gpt2.make_tiny_gpt2_gguf(hf_dir, p, qtype=qtype,
                                                                          output_copy=output_copy))


@pytest.mark.parametrize("form", FORMS)
def test_matches_transformers(form, tiny_dir, tmp_path):
    figures = fh.decoder_matches_transformers(_hf(tiny_dir, form), tmp_path)
    assert figures["greedy_identical"] == len(fh.PROMPTS)


@pytest.mark.parametrize("form", ["gpt2_legacy", "starcoder_mqa", "starcoder_mha"])
def test_variants_pass_gates(form, tiny_dir, tmp_path):
    fh.variants_pass_gates(_hf(tiny_dir, form), tmp_path)


# --- checkpoint layout ----------------------------------------------------------------------------

def test_conv1d_weights_are_made_canonical(tiny_dir):
    """The safetensors hold c_attn as [in, out] = [64, 192]; the source presents nn.Linear's
    [192, 64], the same numbers transposed, under the prefixed name; buffers are not presented."""
    from safetensors.numpy import load_file

    from apr_qa.sources import open_source

    hf_dir = _hf(tiny_dir, "gpt2_legacy")
    stored = load_file(hf_dir / "model.safetensors")
    assert stored["h.0.attn.c_attn.weight"].shape == (64, 192) and "h.0.attn.bias" in stored
    src = open_source(hf_dir)
    try:
        shapes = {t.name: t.shape for t in src.tensors()}
        assert set(shapes) == set(src.arch.tensors())  # no buffer, no unprefixed name
        assert shapes["transformer.h.0.attn.c_attn.weight"] == (192, 64)
        assert shapes["transformer.h.1.mlp.c_fc.weight"] == (256, 64)
        assert shapes["transformer.h.1.mlp.c_proj.weight"] == (64, 256)
        assert np.array_equal(src.load("transformer.h.0.attn.c_attn.weight"), stored["h.0.attn.c_attn.weight"].T)
        assert np.array_equal(src.load("transformer.wpe.weight"), stored["wpe.weight"])  # not a Conv1D
        # a square Conv1D keeps its shape but is transposed all the same, on the raw (copy) path too
        raw = src.load_raw("transformer.h.0.attn.c_proj.weight")
        assert raw.shape == (64, 64) and np.array_equal(raw.data, stored["h.0.attn.c_proj.weight"].T)
    finally:
        src.close()


def test_starcoder_attention_shapes(tiny_dir):
    mqa = architecture_for(json.loads((_hf(tiny_dir, "starcoder_mqa") / "config.json").read_text()))
    mha = architecture_for(json.loads((_hf(tiny_dir, "starcoder_mha") / "config.json").read_text()))
    assert (mqa.hp.attention, mqa.hp.num_kv_heads) == ("multi-query", 1)
    assert mqa.tensors()["transformer.h.0.attn.c_attn.weight"] == (64 + 2 * 16, 64)
    assert (mha.hp.attention, mha.tensors()["transformer.h.0.attn.c_attn.weight"]) == ("multi-head", (192, 64))


@pytest.mark.parametrize("key, value", [("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                                        ("scale_attn_weights", False), ("add_cross_attention", True)])
def test_unsupported_attention_options_are_refused(key, value, tiny_dir):
    for form in ("gpt2", "starcoder_mqa"):
        cfg = json.loads((_hf(tiny_dir, form) / "config.json").read_text())
        with pytest.raises(UnsupportedError, match=key):
            architecture_for({**cfg, key: value})
        architecture_for({**cfg, key: not value})  # the default is accepted


# --- GGUF -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", GGUF_FORMS)
@pytest.mark.parametrize("output_copy", [False, True], ids=["current", "output-copy"])
def test_gguf_reads_back(form, output_copy, tiny_dir):
    """F32 and F16 GGUFs, with and without the output.weight copy older converters wrote: the HF
    canonical tensors (Conv1D transposes undone by llama.cpp, not again by us), same hyperparameters,
    same logits."""
    fh.gguf_reads_back(_hf(tiny_dir, form), _gguf(tiny_dir, form, "F32", output_copy))
    fh.gguf_reads_back(_hf(tiny_dir, form), _gguf(tiny_dir, form, "F16", output_copy), exact=False)


@pytest.mark.parametrize("form", GGUF_FORMS)
def test_gguf_metadata_is_the_converters(form, tiny_dir):
    """The keys convert_hf_to_gguf.py writes (GPT2Model / StarCoderModel.set_gguf_parameters) rebuild
    the HF config; position_embd stays F32 at every type, as the converter keeps it."""
    from gguf import GGUFReader

    from apr_qa.sources import open_source

    path = _gguf(tiny_dir, form, "Q8_0")
    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    assert arch == {"gpt2_legacy": "gpt2", "starcoder_mqa": "starcoder"}[form]
    assert reader.fields[f"{arch}.feed_forward_length"].contents() == 256
    assert reader.fields["tokenizer.ggml.pre"].contents() == {"gpt2": "gpt-2", "starcoder": "starcoder"}[arch]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["position_embd.weight"] == "F32" and types["blk.0.attn_qkv.weight"] == "Q8_0"
    assert "blk.0.attn_qkv.bias" in types and "output.weight" not in types
    hf_cfg = json.loads((_hf(tiny_dir, form) / "config.json").read_text())
    src = open_source(path)
    try:
        cfg = src.config
        assert cfg["architectures"] == hf_cfg["architectures"] and cfg["model_type"] == hf_cfg["model_type"]
        for key in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size", "activation_function",
                    "layer_norm_epsilon", "bos_token_id", "eos_token_id"):
            assert cfg[key] == hf_cfg[key], key
        assert cfg["tie_word_embeddings"] is True
        assert cfg.get("multi_query", True) == hf_cfg.get("multi_query", True)
    finally:
        src.close()


@pytest.mark.parametrize("form", GGUF_FORMS)
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_gguf_reads_back_its_blocks(form, qtype, tiny_dir):
    """A block-quantized GGUF presents exactly the converter's blocks of the canonical tensors:
    each matrix equals quantize-then-dequantize of the HF tensor (transposed first for Conv1D)."""
    import gguf
    from gguf.quants import dequantize, quantize

    from apr_qa.sources import open_source

    hf, gg = open_source(_hf(tiny_dir, form)), open_source(_gguf(tiny_dir, form, qtype))
    try:
        qt = gguf.GGMLQuantizationType[qtype]
        quantized = 0
        for info in hf.tensors():
            want = hf.load(info.name)
            if want.ndim == 2 and info.name != "transformer.wpe.weight":
                want = dequantize(quantize(want, qt), qt)
                quantized += 1
            assert np.array_equal(gg.load(info.name), want), info.name
        assert quantized == 1 + 4 * 2  # wte and four matrices per layer
    finally:
        hf.close()
        gg.close()


@pytest.mark.parametrize("form", GGUF_FORMS)
def test_runs_from_gguf(form, tiny_dir, tmp_path):
    """Generation straight from the F32 GGUF is transformers' greedy continuation; a Q8_0 GGUF
    converts to .apr with its blocks kept, passes every gate and G0, and generates."""
    import torch
    from transformers import AutoModelForCausalLM

    from apr_qa.apr import AprReader
    from apr_qa.certify.gateways import g0_integrity
    from apr_qa.convert import convert
    from apr_qa.runtime import load_model
    from apr_qa.validate import validate

    hf_dir = _hf(tiny_dir, form)
    ours = load_model(_gguf(tiny_dir, form, "F32"))
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for text in fh.PROMPTS:
        ids = ours.tokenizer.encode(text)
        with torch.inference_mode():
            want = reference.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                      pad_token_id=ours.tokenizer.pad_id)[0, len(ids):].tolist()
        assert ours.generate([ids], 32, stop_on_eos=False)[0].token_ids == want, text

    gguf_path, apr = _gguf(tiny_dir, form, "Q8_0"), tmp_path / f"{form}.q8_0.apr"
    convert(gguf_path, apr, "q8_0")
    failed = [f"{r.id}: {r.message}" for r in validate(apr, gguf_path) if not r.passed]
    assert not failed
    assert g0_integrity(apr).passed
    with AprReader(apr) as reader:
        dtypes = {e.name: e.dtype.name for e in reader.entries}
    assert dtypes["transformer.h.0.attn.c_attn.weight"] == "Q8_0"
    assert dtypes["transformer.h.0.ln_1.bias"] == "F32"
    assert len(load_model(apr).generate([fh.PROMPTS[0]], 4, stop_on_eos=False)[0].token_ids) == 4


def test_tokenizer_from_gguf_matches_hf(tiny_dir):
    """The "gpt-2" split (digits not isolated) and the "starcoder" one (digits isolated) rebuild the
    HF tokenizers: same ids on every test text."""
    from apr_qa.runtime import load_model

    for form in GGUF_FORMS:
        hf, gg = load_model(_hf(tiny_dir, form)), load_model(_gguf(tiny_dir, form, "F32"))
        for text in tiny_models.TOKENIZER_PROMPTS:
            assert gg.tokenizer.encode(text) == hf.tokenizer.encode(text), (form, text)


def test_multi_head_starcoder_gguf_is_refused_not_misread(tiny_dir):
    """convert_hf_to_gguf.py writes head_count_kv 1 for every GPTBigCode model, so a multi-head one
    reads as multi-query with a c_attn three times too tall: a one-line shape error, not garbage."""
    from apr_qa.runtime import load_model

    with pytest.raises(FormatError, match="c_attn.weight has shape"):
        load_model(_gguf(tiny_dir, "starcoder_mha", "F32"))
