"""`apr-qa export-gguf`: a .apr written back as the GGUF llama.cpp's converter would have written.

For a tiny model of every family the registry maps to a GGUF architecture (llama, qwen2, gpt2,
starcoder, phi2, stablelm, falcon, bert), f32 and q8_0 .apr files export and read back through the
GGUF source as the same tensors (blocks byte-identical; row permutations undone), the same
hyperparameters and tokenizer, and the same logits on our runtime. K-quant rows the .apr pads are
re-encoded (and said so); forms llama.cpp cannot run are refused with exit 2 and no output. The real
SmolLM2 exports at q8_0 and q4_0.

When llama-cpp-python is importable: llama.cpp loads every export and its logits (hidden states for
BERT) and tokenization match our runtime on the .apr; and llama.cpp quantizing our f32 export gives
the very bytes of our q8_0 / q4_0 exports, hence bit-identical logits: our quantized blocks are
llama.cpp's. Otherwise those tests skip with the reason.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import family_harness as fh
import tiny_falcon
import tiny_gpt2
import tiny_models
import tiny_phi
from apr_qa.apr import AprReader
from apr_qa.arch import architecture_for
from apr_qa.cli import main
from apr_qa.convert import convert
from apr_qa.gguf_export import export_gguf
from apr_qa.runtime import load_model
from apr_qa.sources import open_source

# tiny_dir folder -> builder; the names are the ones the family tests use, so a full run builds each once
FORMS = {
    "llama": tiny_models.make_tiny_llama,  # GQA 4:2, untied
    "llama_qwen2": lambda p: tiny_models.make_tiny_llama(p, model_type="qwen2", use_sliding_window=False),
    "llama_mqa": lambda p: tiny_models.make_tiny_llama(p, num_kv_heads=1),
    "llama_rope_linear": lambda p: tiny_models.make_tiny_llama(p, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "gpt2": tiny_gpt2.make_tiny_gpt2,
    "starcoder_mqa": tiny_gpt2.make_tiny_starcoder,
    "phi": tiny_phi.make_tiny_phi,
    "stablelm_bias_parallel": lambda p: tiny_phi.make_tiny_stablelm(p, qkv_bias=True, parallel_residual=True,
                                                                    num_kv_heads=2),
    "falcon_mqa": lambda p: tiny_falcon.make_tiny_falcon(p, "mqa"),
    "falcon_new_decoder": lambda p: tiny_falcon.make_tiny_falcon(p, "new_decoder"),
    "bert": tiny_models.make_tiny_bert,
}
# llama.cpp on the f32 export against our runtime on the f32 .apr: float summation order only.
# Measured at most 4e-4 of the logit range (SmolLM2 too); BERT hidden states 9e-5.
LLAMACPP_F32_LIMIT = 1e-3


def _hf(tiny_dir: Path, form: str) -> Path:
    return tiny_models.once(tiny_dir / form, FORMS[form])


def _export(hf_dir: Path, tmp_path: Path, level: str, **kwargs):
    apr, out = tmp_path / f"{hf_dir.name}.{level}.apr", tmp_path / f"{hf_dir.name}.{level}.gguf"
    convert(hf_dir, apr, level)
    return apr, out, export_gguf(apr, out, **kwargs)


def _stored_bytes(raw) -> np.ndarray:
    return np.ascontiguousarray(raw.data).view(np.uint8).reshape(-1)


def assert_reads_back(apr: Path, out: Path) -> None:
    """The GGUF source presents the .apr's tensors (same dtype, same bytes), hyperparameters and a
    tokenizer that encodes every test text alike."""
    from apr_qa.runtime.tokenizer import Tokenizer

    with AprReader(apr) as reader:
        arch = architecture_for(reader.config)
        gg = open_source(out)
        try:
            assert {t.name for t in gg.tensors()} == set(arch.tensors())
            for name in arch.tensors():
                want, got = reader.load_raw(name), gg.load_raw(name)
                assert got is not None and got.dtype == want.dtype and got.shape == want.shape, name
                assert np.array_equal(_stored_bytes(got), _stored_bytes(want)), f"{name}: bytes differ"
            assert architecture_for(gg.config).hp == arch.hp
            ours, back = (Tokenizer(s.tokenizer_json, s.tokenizer_config, s.config, s.path) for s in (reader, gg))
            for text in tiny_models.TOKENIZER_PROMPTS:
                assert back.encode(text) == ours.encode(text), text
        finally:
            gg.close()


def assert_runs_alike(apr: Path, out: Path) -> None:
    """Our runtime computes the same outputs from either file."""
    ours, back = load_model(apr), load_model(out)
    ids = ours.tokenizer.encode(fh.PROMPTS[0])
    assert back.tokenizer.encode(fh.PROMPTS[0]) == ids
    if ours.kind == "decoder":
        assert torch.equal(back.logits([ids])[0], ours.logits([ids])[0])
    else:
        assert torch.equal(back.hidden_states([ids])[0], ours.hidden_states([ids])[0])


@pytest.mark.parametrize("level", ["f32", "q8_0"])
@pytest.mark.parametrize("form", FORMS)
def test_exports_and_reads_back(form, level, tiny_dir, tmp_path):
    apr, out, result = _export(_hf(tiny_dir, form), tmp_path, level)
    arch = architecture_for(json.loads((_hf(tiny_dir, form) / "config.json").read_text()))
    assert result.architecture == arch.gguf_name_of_arch()
    assert not result.reencoded
    if level == "q8_0":
        assert result.dtype_counts.get("Q8_0", 0) > 0
    assert_reads_back(apr, out)
    assert_runs_alike(apr, out)


@pytest.mark.parametrize("level", ["f16", "bf16", "q4_0"])
def test_other_levels_copy_as_stored(level, tiny_dir, tmp_path):
    apr, out, result = _export(_hf(tiny_dir, "llama"), tmp_path, level)
    assert result.dtype_counts[level.upper()] == 16 and not result.reencoded  # every matrix (7 a layer, embed, head)
    assert_reads_back(apr, out)
    assert_runs_alike(apr, out)


def test_gguf_keys_are_the_converters(tiny_dir, tmp_path):
    """The llama export carries the keys convert_hf_to_gguf.py's LlamaModel writes, with the values of
    config.json, and the tokenizer keys of _set_vocab_gpt2 + SpecialVocab."""
    hf_dir = _hf(tiny_dir, "llama")
    cfg = json.loads((hf_dir / "config.json").read_text())
    _, out, _ = _export(hf_dir, tmp_path, "q8_0")
    meta = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    expected = {
        "general.architecture": "llama", "general.file_type": gguf.LlamaFileType.MOSTLY_Q8_0,
        "llama.block_count": cfg["num_hidden_layers"], "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"], "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.attention.head_count": cfg["num_attention_heads"],
        "llama.attention.head_count_kv": cfg["num_key_value_heads"], "llama.rope.freq_base": cfg["rope_theta"],
        "llama.attention.key_length": cfg["head_dim"], "llama.vocab_size": cfg["vocab_size"],
        "llama.rope.dimension_count": cfg["head_dim"], "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": tiny_models.CHAT_TEMPLATE,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert math.isclose(meta["llama.attention.layer_norm_rms_epsilon"], cfg["rms_norm_eps"], rel_tol=1e-6)
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    assert len(meta["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    assert meta["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3  # the added special tokens


def test_mistral_window_is_reported_not_recorded(tiny_dir, tmp_path):
    """llama.cpp's LLAMA graph has no sliding window (its converter writes Mistral as llama without
    one): the export says so, and everything else reads back."""
    hf_dir = tiny_models.once(tiny_dir / "llama_mistral_window", lambda p: tiny_models.make_tiny_llama(
        p, model_type="mistral", sliding_window=8))
    apr, out, result = _export(hf_dir, tmp_path, "f32")
    assert any("sliding window [8] not recorded" in n for n in result.notes)
    with AprReader(apr) as reader:
        gg = open_source(out)
        want = architecture_for(reader.config).hp
        assert architecture_for(gg.config).hp == dataclasses.replace(want, sliding_windows=())
        gg.close()


def test_llama_q_k_rows_are_permuted_as_the_converter_does(tiny_dir, tmp_path):
    """The exported attn_q is LlamaModel.permute of the HF q_proj (tests/helpers/tiny_models' independent copy)."""
    from safetensors.numpy import load_file

    hf_dir = _hf(tiny_dir, "llama")
    hf = load_file(hf_dir / "model.safetensors")
    _, out, _ = _export(hf_dir, tmp_path, "f32")
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    cfg = json.loads((hf_dir / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for gguf_name, hf_name, n_kv in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", heads),
                                      ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", kv)):
        assert np.array_equal(tensors[gguf_name], tiny_models.permute(hf[hf_name], heads, n_kv))
    assert not np.array_equal(tensors["blk.0.attn_q.weight"], hf["model.layers.0.self_attn.q_proj.weight"])


def test_k_quant_rows_padded_in_the_apr_are_reencoded(tiny_dir, tmp_path):
    """hidden 256: q/k/v/gate/up rows are whole Q4_K super-blocks and are copied as they are; down_proj's
    rows of 128 are padded in the .apr and become Q8_0 (or F16 on request), within those types'
    rounding of the .apr's values, and the export says so."""
    hf_dir = tiny_models.once(tiny_dir / "llama_h256", lambda p: tiny_models.make_tiny_llama(p, hidden=256,
                                                                                            head_dim=64))
    apr, out, result = _export(hf_dir, tmp_path, "q4_k")
    down = "model.layers.0.mlp.down_proj.weight"
    assert result.reencoded[down] == "Q4_K -> Q8_0"
    assert "model.layers.0.self_attn.q_proj.weight" not in result.reencoded
    assert any("re-encoded" in n and "rows of 128 values" in n for n in result.notes)
    gg = open_source(out)
    with AprReader(apr) as reader:
        q = "model.layers.0.self_attn.q_proj.weight"
        assert gg.load_raw(q).dtype.name == "Q4_K"
        assert np.array_equal(_stored_bytes(gg.load_raw(q)), _stored_bytes(reader.load_raw(q)))
        want = reader.load(down)
        assert gg.load_raw(down).dtype.name == "Q8_0"
        block_max = np.abs(want).reshape(want.shape[0], -1, 32).max(-1, keepdims=True)
        err = np.abs(gg.load(down) - want).reshape(block_max.shape[:2] + (32,))
        # half a Q8_0 step d = max / 127, plus q (<= 127) times the f16 rounding of d (2^-11 relative)
        assert (err <= block_max / 127 * (0.5 + 127 * 2.0 ** -11) + 1e-7).all()
        assert architecture_for(gg.config).hp == architecture_for(reader.config).hp
    gg.close()

    f16_out = tmp_path / "f16.gguf"
    result = export_gguf(apr, f16_out, reencode="f16")
    assert result.reencoded[down] == "Q4_K -> F16"
    gg = open_source(f16_out)
    with AprReader(apr) as reader:
        np.testing.assert_allclose(gg.load(down), reader.load(down), rtol=2 ** -10, atol=1e-7)
    gg.close()


def test_sentencepiece_tokenizer_round_trips(tiny_dir, tmp_path):
    """A Llama-2-style tokenizer (BPE with byte fallback, Metaspace, <0xXX> byte tokens) is written as
    llama.cpp's "llama" vocabulary: byte tokens BYTE, specials CONTROL, scores ranked by merge order,
    space prefix on; it reads back encoding and decoding every test text alike."""
    hf_dir = tiny_models.once(tiny_dir / "llama_spm", _make_spm_llama)
    apr, out, _ = _export(hf_dir, tmp_path, "f32")
    meta = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is True
    types, tokens = meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.tokens"]
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert types[3:259] == [gguf.TokenType.BYTE] * 256 and tokens[3] == "<0x00>"
    scores = meta["tokenizer.ggml.scores"]
    first_merge = "".join(json.loads((hf_dir / "tokenizer.json").read_text())["model"]["merges"][0])
    assert scores[tokens.index(first_merge)] == 0.0 and min(scores) < -50
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert_reads_back(apr, out)
    ours, back = load_model(apr), load_model(out)
    for text in tiny_models.TOKENIZER_PROMPTS:
        ids = ours.tokenizer.encode(text)
        assert back.tokenizer.decode(ids) == ours.tokenizer.decode(ids)


def _make_spm_llama(folder: Path) -> Path:
    """The tiny llama with a SentencePiece-style tokenizer of the same 384 ids: <unk> <s> </s>, 256 byte
    tokens, BPE pieces trained on a 60-character alphabet (the rest falls back to bytes), then
    special <unusedN> tokens up to the size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tiny_models.make_tiny_llama(folder)
    size = json.loads((folder / "config.json").read_text())["vocab_size"]
    trainer = Tokenizer(models.BPE())
    trainer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer.train_from_iterator(tiny_models.CORPUS, trainers.BpeTrainer(vocab_size=size - 259, limit_alphabet=60,
                                                                        show_progress=False))
    trained = json.loads(trainer.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = [*specials, *(f"<0x{b:02X}>" for b in range(256)), *sorted(trained["vocab"], key=trained["vocab"].get)]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_special_tokens([AddedToken(f"<unused{i}>", special=True, normalized=False)
                            for i in range(size - len(vocab))])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)])
    assert tok.get_vocab_size() == size
    tok.save(str(folder / "tokenizer.json"))
    tiny_models.write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False})
    return folder


# --- refusals and errors --------------------------------------------------------------------------

REFUSED = {
    "falcon_alibi": (lambda p: tiny_falcon.make_tiny_falcon(p, "alibi"), "ALiBi"),
    "starcoder_mha": (lambda p: tiny_gpt2.make_tiny_starcoder(p, multi_query=False), "multi-query"),
    "llama_rope_dynamic": (lambda p: tiny_models.make_tiny_llama(
        p, rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=24), "dynamic"),
}


@pytest.mark.parametrize("form", REFUSED)
def test_forms_llama_cpp_cannot_run_are_refused(form, tiny_dir, tmp_path, capsys):
    build, why = REFUSED[form]
    apr = tmp_path / "m.apr"
    convert(tiny_models.once(tiny_dir / form, build), apr, "f32")
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(apr), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(apr) in err and why in err, err
    assert not out.exists() and not list(tmp_path.glob(".m.gguf*"))


def test_family_without_gguf_architecture_exits_2(tiny_dir, tmp_path, capsys):
    import tiny_encoders

    apr = tmp_path / "albert.apr"
    convert(tiny_models.once(tiny_dir / "enc_albert", tiny_encoders.make_tiny_albert), apr, "f32")
    out = tmp_path / "albert.gguf"
    assert main(["export-gguf", str(apr), str(out)]) == 2
    err = capsys.readouterr().err
    assert "ALBERT has no llama.cpp GGUF architecture" in err and str(apr) in err and "Llama" in err
    assert not out.exists()


def test_damaged_apr_is_refused_naming_the_file(tiny_dir, tmp_path, capsys):
    apr = tmp_path / "m.apr"
    convert(_hf(tiny_dir, "llama"), apr, "q8_0")
    data = bytearray(apr.read_bytes())
    data[len(data) // 2] ^= 0xFF
    apr.write_bytes(bytes(data))
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(apr), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(apr) in err and "CRC" in err
    assert not out.exists()


def test_cli_summary_and_json(tiny_dir, tmp_path, capsys):
    hf_dir = tiny_models.once(tiny_dir / "llama_h256", lambda p: tiny_models.make_tiny_llama(p, hidden=256,
                                                                                            head_dim=64))
    apr = tmp_path / "m.apr"
    convert(hf_dir, apr, "q4_k")
    out, summary = tmp_path / "m.gguf", tmp_path / "m.json"
    assert main(["export-gguf", str(apr), str(out), "--json", str(summary)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"{out}: llama GGUF, ") and "Q4_K" in err[-1]
    assert any("warning" in line and "re-encoded" in line for line in err[:-1])
    record = json.loads(summary.read_text())
    assert record["size_bytes"] == out.stat().st_size and record["reencoded"]


# --- the real SmolLM2 -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_exports(smollm2_derived, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2_export")
    return {level: _export(smollm2_derived, folder, level) for level in ("q8_0", "q4_0")}


@pytest.mark.parametrize("level", ["q8_0", "q4_0"])
def test_smollm2_exports_and_reads_back(smollm2_exports, level):
    apr, out, result = smollm2_exports[level]
    assert result.architecture == "llama" and not result.reencoded
    assert result.dtype_counts[level.upper()] == 211  # every matrix; the 61 norms are F32
    assert_reads_back(apr, out)  # same bytes, hyperparameters and tokenizer: our runtime's logits follow


def test_minilm_exports_with_its_pooling(minilm_dir, tmp_path):
    """The real all-MiniLM-L6-v2: its sentence-transformers mean pooling becomes bert.pooling_type."""
    apr, out, result = _export(minilm_dir, tmp_path, "f32")
    assert result.architecture == "bert"
    assert gguf.GGUFReader(out).fields["bert.pooling_type"].contents() == gguf.PoolingType.MEAN
    assert_reads_back(apr, out)
    gg = open_source(out)
    assert gg.pooling_config["pooling_mode_mean_tokens"] and not gg.pooling_config["pooling_mode_cls_token"]
    gg.close()


# --- llama.cpp --------------------------------------------------------------------------------------


def _llamacpp_outputs(llama_cpp, path: Path, ids: list[int], encoder: bool) -> torch.Tensor:
    model = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, logits_all=not encoder, embedding=encoder,
                            verbose=False, n_threads=2)
    if encoder:
        return torch.tensor(model.embed(fh.PROMPTS[0], normalize=False))  # per token: the GGUF names no pooling
    model.eval(ids)
    return torch.from_numpy(np.array(model.scores[:len(ids)]))


def _llamacpp_tokens(llama_cpp, path: Path, texts: list[str]) -> list[list[int]]:
    model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    return [model.tokenize(t.encode(), add_bos=True, special=True) for t in texts]


@pytest.mark.parametrize("form", FORMS)
def test_llamacpp_runs_the_export_like_our_runtime(form, llama_cpp, tiny_dir, tmp_path):
    apr, out, _ = _export(_hf(tiny_dir, form), tmp_path, "f32")
    ours = load_model(apr)
    ids = ours.tokenizer.encode(fh.PROMPTS[0])
    encoder = ours.kind == "encoder"
    want = ours.hidden_states([ids])[0] if encoder else ours.logits([ids])[0]
    got = _llamacpp_outputs(llama_cpp, out, ids, encoder)
    assert fh.relative_diff(got, want) <= LLAMACPP_F32_LIMIT
    if not encoder:
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert _llamacpp_tokens(llama_cpp, out, fh.PROMPTS) == [ours.tokenizer.encode(t) for t in fh.PROMPTS]


def test_llamacpp_applies_llama3_rope_factors(llama_cpp, tiny_dir, tmp_path):
    """llama3 scaling travels as LlamaModel's rope_freqs tensor, which llama.cpp applies. (The GGUF
    reader skips that tensor and records no scaling, so this form is proven through llama.cpp.)"""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf_dir = tiny_models.once(tiny_dir / "llama_rope_llama3",
                              lambda p: tiny_models.make_tiny_llama(p, rope_scaling=scaling))
    apr, out, _ = _export(hf_dir, tmp_path, "f32")
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(out).tensors}
    ours = load_model(apr)
    ids = ours.tokenizer.encode(fh.PROMPTS[1])
    want = ours.logits([ids])[0]
    assert fh.relative_diff(_llamacpp_outputs(llama_cpp, out, ids, False), want) <= LLAMACPP_F32_LIMIT


def test_llamacpp_pools_minilm_like_our_runtime(llama_cpp, minilm_dir, tmp_path):
    apr, out, _ = _export(minilm_dir, tmp_path, "f32")
    ours = load_model(apr)
    model = llama_cpp.Llama(str(out), n_ctx=128, embedding=True, verbose=False, n_threads=2)
    for text in fh.PROMPTS:
        got = torch.tensor(model.embed(text, normalize=False), dtype=torch.float64)
        want = ours.embed([text])[0].double()
        assert float(torch.nn.functional.cosine_similarity(got, want, dim=0)) >= fh.MIN_EMBEDDING_COSINE


def _llamacpp_quantize(llama_cpp, src: Path, dst: Path, ftype: int) -> Path:
    """llama-quantize's pure mode: every matrix in `ftype`'s type (no Q6_K head), as our levels do."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.pure = ftype, 2, True
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


def assert_llamacpp_quantizes_alike(llama_cpp, f32_gguf: Path, ours: Path, level: str,
                                    ids: list[int] | None = None) -> None:
    """Every tensor of `ours` is the one llama.cpp writes quantizing `f32_gguf` to `level`; with `ids`,
    llama.cpp's logits on the two files are bit-identical too (what identical bytes imply)."""
    ftype = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[level]
    theirs = _llamacpp_quantize(llama_cpp, f32_gguf, ours.with_suffix(".llamacpp.gguf"), ftype)
    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert set(mine) == set(ref)
    differing = [n for n, t in mine.items() if t.tensor_type != ref[n].tensor_type
                 or not np.array_equal(np.asarray(t.data), np.asarray(ref[n].data))]
    assert not differing, differing
    if ids is not None:
        a, b = (_llamacpp_outputs(llama_cpp, p, ids, False) for p in (ours, theirs))
        assert torch.equal(a, b)


@pytest.mark.parametrize("level", ["q8_0", "q4_0"])
def test_llamacpp_quantizes_the_same_bytes(level, llama_cpp, tiny_dir, tmp_path):
    hf_dir = _hf(tiny_dir, "llama")
    _, f32_gguf, _ = _export(hf_dir, tmp_path, "f32")
    _, out, _ = _export(hf_dir, tmp_path, level)
    assert_llamacpp_quantizes_alike(llama_cpp, f32_gguf, out, level, [5, 17, 99, 200, 3])


def test_llamacpp_on_smollm2(llama_cpp, smollm2_exports, smollm2_derived, tmp_path):
    """The real SmolLM2: llama.cpp's own pure q8_0 / q4_0 of our f32 export is byte for byte our q8_0
    / q4_0 export (so llama.cpp computes the same on either; the tiny llama checks the logits too);
    llama.cpp on the f32 export matches our runtime and tokenizes like it."""
    apr, f32_gguf, _ = _export(smollm2_derived, tmp_path, "f32")
    ours = load_model(apr)
    ids = ours.tokenizer.encode(fh.PROMPTS[0])
    want = ours.logits([ids])[0]
    got = _llamacpp_outputs(llama_cpp, f32_gguf, ids, False)
    assert fh.relative_diff(got, want) <= LLAMACPP_F32_LIMIT and torch.equal(got.argmax(-1), want.argmax(-1))
    texts = [*fh.PROMPTS, *tiny_models.TOKENIZER_PROMPTS]
    assert _llamacpp_tokens(llama_cpp, f32_gguf, texts) == [ours.tokenizer.encode(t) for t in texts]
    for level, (_, out, _) in smollm2_exports.items():
        assert_llamacpp_quantizes_alike(llama_cpp, f32_gguf, out, level)

