"""Falcon (FalconForCausalLM, legacy RWForCausalLM) through the architecture registry: every form of
transformers' modeling_falcon.py against transformers, the variants through every gate, and GGUF
files written as llama.cpp's converter writes them (arch falcon, query_key_value regrouped).

What is particular to Falcon and proved here: the three fused-QKV layouts (multi-query [q..., k, v],
new-decoder kv groups, per-head [q, k, v]) reordered to the runtime's [q; k; v] at bind time while
the .apr keeps the HF tensor; parallel attention with one or two LayerNorms and the sequential form;
ALiBi with transformers' bfloat16 slopes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import family_harness as fh
import tiny_falcon
import tiny_models
from apr_qa.arch import architecture_for
from apr_qa.errors import UnsupportedError


def _hf(tiny_dir, form: str):
    return tiny_models.once(tiny_dir / f"falcon_{form}", lambda p: tiny_falcon.make_tiny_falcon(p, form))


def _gguf(tiny_dir, form: str, qtype: str):
    hf_dir = _hf(tiny_dir, form)
    return tiny_models.once(tiny_dir / f"falcon_{form}.{qtype}.gguf",
                            lambda p: tiny_falcon.make_tiny_falcon_gguf(hf_dir, p, qtype=qtype))


def _config(tiny_dir, form: str) -> dict:
    return json.loads((_hf(tiny_dir, form) / "config.json").read_text())


@pytest.mark.parametrize("form", tiny_falcon.FORMS)
def test_matches_transformers(form, tiny_dir, tmp_path):
    figures = fh.decoder_matches_transformers(_hf(tiny_dir, form), tmp_path)
    assert figures["greedy_identical"] == len(fh.PROMPTS)


@pytest.mark.parametrize("form", ["mqa", "new_decoder", "alibi"])
def test_variants_pass_gates(form, tiny_dir, tmp_path):
    fh.variants_pass_gates(_hf(tiny_dir, form), tmp_path)


# --- layouts --------------------------------------------------------------------------------------

def _observe_layer0(cfg: dict):
    """transformers' public forward of a one-layer FalconModel, observed with forward hooks (public torch
    API) on two public submodules: `values` [positions, fused rows] replace what query_key_value computes,
    and the attention output each head hands to `dense` is read back as [positions, heads, head_dim]."""
    from transformers import FalconConfig, FalconModel

    config = FalconConfig(**{k: v for k, v in cfg.items() if k != "architectures"} | {"num_hidden_layers": 1})
    model = FalconModel(config).double().eval()
    attention, fed, seen = model.h[0].self_attention, {}, {}
    attention.query_key_value.register_forward_hook(lambda module, args, out: fed["values"][None].to(out.dtype))
    attention.dense.register_forward_hook(lambda module, args, out: seen.update(heads=args[0]))
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads

    def forward(values: torch.Tensor) -> torch.Tensor:
        fed["values"] = values
        with torch.no_grad():
            model(torch.zeros((1, values.shape[0]), dtype=torch.long))
        return seen["heads"][0].reshape(values.shape[0], heads, head_dim)

    return forward, attention.query_key_value.out_features


@pytest.mark.parametrize("form", tiny_falcon.FORMS)
def test_qkv_order_is_what_transformers_computes(form, tiny_dir):
    """The rows qkv_order takes as each head's q, k and v are the ones transformers' public forward uses:
    - v, in order: with one position the softmax is exactly 1, so each head's attention output is its v
      rows; feeding the row numbers as the fused projection shows which rows, in which order.
    - k and q, as sets per head: with two positions, a change to a k row at position 0 reaches the
      output at position 1 (through the score of key 0) for the heads sharing that k; a change to a q row
      does so only at position 1, and only for its own head.
    The order inside a head's q and k (which rotary pairs) is what test_matches_transformers proves."""
    cfg = _config(tiny_dir, form)
    arch = architecture_for(cfg)
    hp = arch.hp
    forward, rows = _observe_layer0(cfg)
    order = arch.qkv_order()
    q_rows = order[: hp.num_heads * hp.head_dim].reshape(hp.num_heads, hp.head_dim)
    kv_rows = hp.num_kv_heads * hp.head_dim
    k_rows = order[len(q_rows.flat):][:kv_rows].reshape(hp.num_kv_heads, hp.head_dim)
    v_rows = order[len(q_rows.flat) + kv_rows:].reshape(hp.num_kv_heads, hp.head_dim)
    group_of = np.arange(hp.num_heads) // (hp.num_heads // hp.num_kv_heads)

    v_seen = forward(torch.arange(rows, dtype=torch.float64)[None])[0].long().numpy()
    np.testing.assert_array_equal(v_seen, v_rows[group_of])

    base = torch.from_numpy(np.random.default_rng(0).normal(size=(2, rows)))
    reference = forward(base)[1]

    def heads_reached(row: int, position: int) -> frozenset[int]:
        values = base.clone()
        values[position, row] += 1.0
        changed = (forward(values)[1] - reference).abs().amax(dim=1) > 1e-9
        return frozenset(np.flatnonzero(changed.numpy()).tolist())

    not_v = sorted(set(range(rows)) - set(v_rows.flat))
    from_key = {r: heads_reached(r, 0) for r in not_v}
    for g in range(hp.num_kv_heads):
        sharing = frozenset(np.flatnonzero(group_of == g).tolist())
        assert {r for r, reached in from_key.items() if reached == sharing} == set(k_rows[g]), (form, g)
    queries = [r for r, reached in from_key.items() if not reached]
    from_query = {r: heads_reached(r, 1) for r in queries}
    for h in range(hp.num_heads):
        assert {r for r, reached in from_query.items() if reached == {h}} == set(q_rows[h]), (form, h)
    assert len(queries) == q_rows.size


@pytest.mark.parametrize("form", tiny_falcon.FORMS)
def test_qkv_order_is_llamacpp_regroup(form, tiny_dir):
    """qkv_order applied to a fused matrix gives what llama.cpp's converter (convert_hf_to_gguf.py,
    FalconModel) writes: a view as (n_head_kv, n_head / n_head_kv + 2, head_dim, hidden), the leading
    q heads of every group, then each group's k, then each group's v. n_head_kv is the model's KV head
    count: 1 (multi-query), num_kv_heads (new decoder) or every head (the per-head [q, k, v] layout)."""
    cfg = _config(tiny_dir, form)
    arch = architecture_for(cfg)
    hp = arch.hp
    rows = arch.tensors()["transformer.h.0.self_attention.query_key_value.weight"][0]
    fused = torch.arange(rows * 2, dtype=torch.float64).reshape(rows, 2)
    qkv = fused.view(hp.num_kv_heads, hp.num_heads // hp.num_kv_heads + 2, hp.head_dim, 2)
    q = qkv[:, :-2].reshape(hp.num_heads * hp.head_dim, 2)
    k = qkv[:, [-2]].reshape(hp.num_kv_heads * hp.head_dim, 2)
    v = qkv[:, [-1]].reshape(hp.num_kv_heads * hp.head_dim, 2)
    assert torch.equal(fused[torch.from_numpy(arch.qkv_order())], torch.cat((q, k, v)))


def test_attention_shapes(tiny_dir):
    expect = {  # (attention, kv heads, fused rows, parallel residual, norms of layer 0)
        "mqa": ("multi-query", 1, 64 + 2 * 16, True, {"input_layernorm"}),
        "new_decoder": ("grouped-query", 2, 64 + 2 * 2 * 8, True, {"ln_attn", "ln_mlp"}),
        "new_decoder_1ln": ("grouped-query", 4, 64 + 2 * 4 * 8, True, {"input_layernorm"}),
        "mha_parallel": ("multi-head", 4, 3 * 64, True, {"input_layernorm"}),
        "alibi": ("multi-head", 16, 3 * 64, False, {"input_layernorm", "post_attention_layernorm"}),
        "sequential": ("multi-head", 4, 3 * 64, False, {"input_layernorm", "post_attention_layernorm"}),
    }
    for form, (attention, kv, rows, parallel, norms) in expect.items():
        arch = architecture_for(_config(tiny_dir, form))
        tensors = arch.tensors()
        assert (arch.hp.attention, arch.hp.num_kv_heads, arch.hp.parallel_residual) == (attention, kv, parallel)
        assert tensors["transformer.h.0.self_attention.query_key_value.weight"] == (rows, 64)
        layer0 = {n.split(".")[3] for n in tensors if n.startswith("transformer.h.0.")}
        assert {n for n in layer0 if "norm" in n or n.startswith("ln_")} == norms, form
        assert arch.hp.positions == ("alibi" if form == "alibi" else "rope")
        assert ("transformer.h.0.mlp.dense_h_to_4h.bias" in tensors) == (form in ("alibi", "sequential"))
        # every tensor of the checkpoint is in the table, and nothing else
        from safetensors import safe_open

        with safe_open(_hf(tiny_dir, form) / "model.safetensors", "np") as f:
            assert set(f.keys()) == set(tensors), form


def test_alibi_slopes_are_transformers_bfloat16():
    """build_alibi_tensor multiplies bfloat16 slopes by the key positions; the runtime's bias is the
    same bfloat16 product for every head count (powers of two and not)."""
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    from apr_qa.runtime.decoder import alibi_slopes

    positions = torch.ones((1, 40), dtype=torch.long)
    for heads in range(1, 129):
        want = build_alibi_tensor(positions, heads, torch.float32)[:, 0]  # [heads, 40]
        got = alibi_slopes(heads).bfloat16()[:, None] * torch.arange(40)
        assert torch.equal(got.float(), want), heads


def test_alibi_bfloat16_rounding_shows_in_the_logits(tiny_dir):
    """The tiny ALiBi model (16 heads: slopes not powers of two) is sensitive to the rounding: float32
    slopes would miss transformers' logits by several times the oracle's limit."""
    from apr_qa.runtime import load_model

    model = load_model(_hf(tiny_dir, "alibi"))
    batch = [model.tokenizer.encode(text) for text in tiny_models.TOKENIZER_PROMPTS]
    exact = model.logits(batch)
    model.alibi_slopes = model.alibi_slopes.float()
    worst = max(fh.relative_diff(got, want) for got, want in zip(model.logits(batch), exact, strict=True))
    assert worst > 5 * fh.RELATIVE_LIMIT


def _legacy(cfg: dict, model_type: str) -> dict:
    """The RWForCausalLM spelling of a config: n_head / n_layer / n_head_kv, no new_decoder_architecture
    (model_type RefinedWeb is the 40B decoder, RefinedWebModel the 7B one)."""
    out = {k: v for k, v in cfg.items()
           if k not in ("num_attention_heads", "num_hidden_layers", "num_kv_heads", "new_decoder_architecture")}
    out.update(architectures=["RWForCausalLM"], model_type=model_type, n_head=cfg["num_attention_heads"],
               n_layer=cfg["num_hidden_layers"])
    if "num_kv_heads" in cfg:
        out["n_head_kv"] = cfg["num_kv_heads"]
    return out


def test_legacy_refinedweb_configs(tiny_dir):
    """Legacy configs describe the same models as their FalconForCausalLM configs, and a legacy
    folder runs to the same logits."""
    import shutil

    from apr_qa.runtime import load_model

    for form, model_type in (("new_decoder", "RefinedWeb"), ("mqa", "RefinedWebModel")):
        cfg = _config(tiny_dir, form)
        modern, old = architecture_for(cfg), architecture_for(_legacy(cfg, model_type))
        assert old.hp == modern.hp and old.tensors() == modern.tensors()
        assert np.array_equal(old.qkv_order(), modern.qkv_order())
    folder = tiny_dir / "falcon_refinedweb"
    if not folder.exists():
        shutil.copytree(_hf(tiny_dir, "new_decoder"), folder)
        (folder / "config.json").write_text(json.dumps(_legacy(_config(tiny_dir, "new_decoder"), "RefinedWeb")))
    ids = [5, 17, 42, 99, 7, 3]
    assert torch.equal(load_model(folder).logits([ids])[0], load_model(_hf(tiny_dir, "new_decoder")).logits([ids])[0])


@pytest.mark.parametrize("overrides, match", [
    ({"new_decoder_architecture": True, "parallel_attn": False}, "without parallel_attn"),
    ({"num_ln_in_parallel_attn": 2}, "needs new_decoder_architecture"),
    ({"new_decoder_architecture": True, "num_ln_in_parallel_attn": 3}, "num_ln_in_parallel_attn 3"),
])
def test_forms_transformers_cannot_run_are_refused(overrides, match, tiny_dir):
    with pytest.raises(UnsupportedError, match=match):
        architecture_for({**_config(tiny_dir, "mqa"), **overrides})


# --- GGUF -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", tiny_falcon.GGUF_FORMS)
def test_gguf_reads_back(form, tiny_dir):
    """F32 and F16 GGUFs: query_key_value regrouped by the converter reads back as the HF rows; same
    hyperparameters, same logits."""
    fh.gguf_reads_back(_hf(tiny_dir, form), _gguf(tiny_dir, form, "F32"))
    fh.gguf_reads_back(_hf(tiny_dir, form), _gguf(tiny_dir, form, "F16"), exact=False)


@pytest.mark.parametrize("form", tiny_falcon.GGUF_FORMS)
def test_gguf_stores_regrouped_rows(form, tiny_dir):
    """The GGUF really holds llama.cpp's [q; k; v] (not the HF layout): a reader that skipped the row
    order would be caught."""
    from gguf import GGUFReader

    from safetensors.numpy import load_file

    cfg = _config(tiny_dir, form)
    hf = load_file(_hf(tiny_dir, form) / "model.safetensors")["transformer.h.0.self_attention.query_key_value.weight"]
    tensors = {t.name: t for t in GGUFReader(_gguf(tiny_dir, form, "F32")).tensors}
    stored = np.asarray(tensors["blk.0.attn_qkv.weight"].data).reshape(hf.shape)
    assert np.array_equal(stored, hf[architecture_for(cfg).qkv_order()])
    assert not np.array_equal(stored, hf) or form == "mqa"  # the 7B layout is [q; k; v] already


@pytest.mark.parametrize("form", tiny_falcon.GGUF_FORMS)
def test_gguf_metadata_is_the_converters(form, tiny_dir):
    """FalconModel.set_gguf_parameters' keys rebuild the HF config: head_count_kv 1 for multi-query
    (config.json has no num_kv_heads), the groups for the new decoder; ln_attn -> attn_norm_2."""
    from gguf import GGUFReader

    from apr_qa.sources import open_source

    path = _gguf(tiny_dir, form, "Q8_0")
    reader = GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    hf_cfg = _config(tiny_dir, form)
    assert field("general.architecture") == "falcon"
    kv_heads = {"mqa": 1, "new_decoder": 2, "new_decoder_1ln": 4, "mha_parallel": 4}[form]
    assert field("falcon.attention.head_count_kv") == kv_heads
    assert (field("falcon.context_length"), field("falcon.feed_forward_length")) == (2048, 256)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == "Q8_0" and types["blk.0.attn_norm.bias"] == "F32"
    assert ("blk.0.attn_norm_2.weight" in types) == (form == "new_decoder")
    src = open_source(path)
    try:
        cfg = src.config
        assert cfg["architectures"] == ["FalconForCausalLM"] and cfg["model_type"] == "falcon"
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "layer_norm_epsilon",
                    "bos_token_id", "eos_token_id"):
            assert cfg[key] == hf_cfg[key], key
        assert cfg["tie_word_embeddings"] == hf_cfg["tie_word_embeddings"]
        assert cfg["new_decoder_architecture"] == (form != "mqa")
    finally:
        src.close()


@pytest.mark.parametrize("form", ["mqa", "new_decoder"])
def test_runs_from_gguf(form, tiny_dir, tmp_path):
    """Generation straight from the F32 GGUF is transformers' greedy continuation; a Q8_0 GGUF
    converts to .apr with its blocks kept (rows reordered back whole), passes every gate and G0, and
    generates."""
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
    assert dtypes["transformer.h.0.self_attention.query_key_value.weight"] == "Q8_0"
    assert dtypes["transformer.ln_f.bias"] == "F32"
    assert len(load_model(apr).generate([fh.PROMPTS[0]], 4, stop_on_eos=False)[0].token_ids) == 4


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_gguf_reads_back_its_blocks(qtype, tiny_dir):
    """A block-quantized GGUF of the new decoder presents the converter's blocks in HF row order:
    each matrix equals quantize-then-dequantize of the HF tensor (blocks never straddle rows)."""
    import gguf
    from gguf.quants import dequantize, quantize

    from apr_qa.sources import open_source

    hf, gg = open_source(_hf(tiny_dir, "new_decoder")), open_source(_gguf(tiny_dir, "new_decoder", qtype))
    try:
        qt = gguf.GGMLQuantizationType[qtype]
        for info in hf.tensors():
            want = hf.load(info.name)
            if want.ndim == 2:
                want = dequantize(quantize(want, qt), qt)
            assert np.array_equal(gg.load(info.name), want), info.name
    finally:
        hf.close()
        gg.close()


def test_tokenizer_from_gguf_matches_hf(tiny_dir):
    from apr_qa.runtime import load_model

    hf, gg = load_model(_hf(tiny_dir, "mqa")), load_model(_gguf(tiny_dir, "mqa", "F32"))
    for text in tiny_models.TOKENIZER_PROMPTS:
        assert gg.tokenizer.encode(text) == hf.tokenizer.encode(text), text


def test_forms_without_a_faithful_gguf_are_refused_by_the_converter_path(tiny_dir, tmp_path):
    """llama.cpp's FALCON graph has no post-attention norm: the sequential form has no GGUF name
    for it (so is served from HF checkpoints only), and the registry says so in one line."""
    arch = architecture_for(_config(tiny_dir, "sequential"))
    assert arch.gguf_name("transformer.h.0.post_attention_layernorm.weight") is None
    with pytest.raises(UnsupportedError, match="post_attention_layernorm.weight has no GGUF FALCON name"):
        arch.gguf_to_canonical_names()
    with pytest.raises(ValueError, match="no tensor for"):
        tiny_falcon.make_tiny_falcon_gguf(_hf(tiny_dir, "sequential"), tmp_path / "x.gguf")
