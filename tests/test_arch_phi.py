"""Phi (PhiForCausalLM) and StableLM (StableLmForCausalLM) through the architecture registry:
partial rotary, LayerNorm with bias, parallel residual, biases (Phi's LM head too). Against
transformers, through every variant's gates, and from GGUF files written as llama.cpp's converter
writes them (arch phi2 / stablelm)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import family_harness as fh
import tiny_models
import tiny_phi
from apr_qa.arch import architecture_for
from apr_qa.errors import UnsupportedError

FORMS = {
    "phi": (tiny_phi.make_tiny_phi, tiny_phi.make_tiny_phi_gguf),
    "stablelm": (tiny_phi.make_tiny_stablelm, tiny_phi.make_tiny_stablelm_gguf),
    # StableLM 2 12B's shape: q/k/v biases, parallel residual (no post-attention norm), grouped-query
    "stablelm_bias_parallel": (lambda p: tiny_phi.make_tiny_stablelm(p, qkv_bias=True, parallel_residual=True,
                                                                     num_kv_heads=2),
                               tiny_phi.make_tiny_stablelm_gguf),
}


def _hf(tiny_dir, form: str):
    return tiny_models.once(tiny_dir / form, FORMS[form][0])


def _gguf(tiny_dir, form: str, qtype: str):
    hf_dir = _hf(tiny_dir, form)
    return tiny_models.once(tiny_dir / f"{form}.{qtype}.gguf", lambda p: FORMS[form][1](hf_dir, p, qtype=qtype))


@pytest.mark.parametrize("form", FORMS)
def test_matches_transformers(form, tiny_dir, tmp_path):
    figures = fh.decoder_matches_transformers(_hf(tiny_dir, form), tmp_path)
    assert figures["greedy_identical"] == len(fh.PROMPTS)


@pytest.mark.parametrize("form", FORMS)
def test_variants_pass_gates(form, tiny_dir, tmp_path):
    fh.variants_pass_gates(_hf(tiny_dir, form), tmp_path)


@pytest.mark.parametrize("form", FORMS)
def test_gguf_reads_back(form, tiny_dir):
    fh.gguf_reads_back(_hf(tiny_dir, form), _gguf(tiny_dir, form, "F32"))
    fh.gguf_reads_back(_hf(tiny_dir, form), _gguf(tiny_dir, form, "F16"), exact=False)


@pytest.mark.parametrize("form", FORMS)
def test_quantized_gguf_converts_validates_and_runs(form, tiny_dir, tmp_path):
    """A Q8_0 GGUF (as `convert_hf_to_gguf.py --outtype q8_0` writes it) converts to .apr with its
    blocks kept, passes every gate and G0 against the GGUF, and generates."""
    from apr_qa.apr import AprReader
    from apr_qa.certify.gateways import g0_integrity
    from apr_qa.convert import convert
    from apr_qa.runtime import load_model
    from apr_qa.validate import validate

    gguf_path, apr = _gguf(tiny_dir, form, "Q8_0"), tmp_path / f"{form}.q8_0.apr"
    convert(gguf_path, apr, "q8_0")
    failed = [f"{r.id}: {r.message}" for r in validate(apr, gguf_path) if not r.passed]
    assert not failed
    assert g0_integrity(apr).passed
    with AprReader(apr) as reader:
        dtypes = {e.name: e.dtype.name for e in reader.entries}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "Q8_0"
    assert dtypes["model.layers.0.input_layernorm.bias"] == "F32"
    model = load_model(apr)
    assert len(model.generate([fh.PROMPTS[0]], 4, stop_on_eos=False)[0].token_ids) == 4


def test_gguf_metadata_is_the_converters(tiny_dir):
    """rope.dimension_count is the rotary dims per head (Phi: int(0.5 * 64) // 4 = 8; StableLM:
    int(0.25 * 16) = 4); Phi2 records 4 * hidden as the FFN length; StableLM the residual form."""
    import gguf

    def fields(form):
        reader = gguf.GGUFReader(_gguf(tiny_dir, form, "F32"))
        return {k: f.contents() for k, f in reader.fields.items()}, {t.name for t in reader.tensors}

    phi, phi_tensors = fields("phi")
    assert phi["general.architecture"] == "phi2" and phi["phi2.rope.dimension_count"] == 8
    assert phi["phi2.feed_forward_length"] == 256 and phi["phi2.attention.head_count_kv"] == 4
    assert {"output.bias", "blk.0.attn_q.weight", "blk.0.attn_output.bias", "blk.0.ffn_up.bias"} <= phi_tensors
    assert not any(".ffn_norm." in t or ".attn_qkv." in t for t in phi_tensors)  # q/k/v separate, one norm
    plain, plain_tensors = fields("stablelm")
    par, par_tensors = fields("stablelm_bias_parallel")
    assert plain["stablelm.rope.dimension_count"] == 4 and plain["stablelm.use_parallel_residual"] is False
    assert par["stablelm.use_parallel_residual"] is True and par["stablelm.attention.head_count_kv"] == 2
    assert "blk.0.ffn_norm.bias" in plain_tensors and "blk.0.attn_q.bias" not in plain_tensors
    assert "blk.0.ffn_norm.weight" not in par_tensors and "blk.0.attn_q.bias" in par_tensors


def test_partial_rotary_and_parallel_residual_matter(tiny_dir, tmp_path):
    """The switches are load-bearing: rotating whole heads, or running StableLM sequentially, moves
    the logits far past the oracle's limit (so the equality tests above can fail)."""
    from transformers import AutoModelForCausalLM

    from apr_qa.runtime import load_model
    from apr_qa.runtime.rope import Rotary

    ids = [5, 17, 42, 99, 7, 3, 250, 11, 64]
    for form in ("phi", "stablelm_bias_parallel"):
        hf_dir = _hf(tiny_dir, form)
        with torch.no_grad():
            want = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()(torch.tensor([ids]))
        model = load_model(hf_dir)
        assert fh.relative_diff(model.logits([ids])[0], want.logits[0]) <= 1e-4
        model.rotary = Rotary(model.rotary.params, model.head_dim, model.max_positions, model.device, model.dtype)
        assert fh.relative_diff(model.logits([ids])[0], want.logits[0]) > 1e-2
    model = load_model(_hf(tiny_dir, "stablelm_bias_parallel"))
    model.hp = dataclasses.replace(model.hp, parallel_residual=False)
    for layer in model.layers:
        layer.mlp_norm = layer.attn_norm
    assert fh.relative_diff(model.logits([ids])[0], want.logits[0]) > 1e-2


def test_hyperparameters_follow_transformers_defaults(tiny_dir):
    """Configs that omit the factor get transformers' defaults (Phi 0.5, StableLM 0.25); the
    rope_parameters spelling of transformers >= 5 reads the same."""
    for form, dims in (("phi", 8), ("stablelm", 4)):
        cfg = json.loads((_hf(tiny_dir, form) / "config.json").read_text())
        assert architecture_for(cfg).hp.rotary_dims == dims
        cfg.pop("partial_rotary_factor")
        assert architecture_for(cfg).hp.rotary_dims == dims
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}
        assert architecture_for(cfg).hp.rotary_dims == 12
    phi = architecture_for(json.loads((_hf(tiny_dir, "phi") / "config.json").read_text())).hp
    assert (phi.norm, phi.activation, phi.gated_mlp, phi.parallel_residual, phi.attention_bias) == \
        ("layer", "gelu_new", False, True, True)


@pytest.mark.parametrize("form, change, problem", [
    ("phi", {"qk_layernorm": True}, "qk_layernorm"),
    ("stablelm", {"qk_layernorm": True}, "qk_layernorm"),
    ("phi", {"model_type": "phi-msft"}, "remote-code"),
])
def test_unsupported_forms_are_refused_in_one_line(form, change, problem, tiny_dir, tmp_path):
    import shutil

    from apr_qa.convert import convert

    src = tmp_path / form
    shutil.copytree(_hf(tiny_dir, form), src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(UnsupportedError, match=problem) as info:
        convert(src, tmp_path / "x.apr", "f32")
    assert "\n" not in str(info.value) and str(src) in str(info.value)
    assert not (tmp_path / "x.apr").exists()
