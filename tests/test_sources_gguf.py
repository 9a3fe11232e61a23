"""GGUF source on tiny GGUFs written like convert_hf_to_gguf.py: names, shapes, un-permuted Q/K,
raw payloads, synthesized config and rebuilt tokenizer; damaged files."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize
from tokenizers import Tokenizer

from apr_qa.dtypes import DType
from apr_qa.errors import FormatError, UnsupportedError
from apr_qa.sources import detect_format, open_source
from apr_qa.arch.base import interleaved_rows as unpermute_rows
from tiny_models import TOKENIZER_PROMPTS as PROMPTS
from tiny_models import permute



def _hf(folder):
    return open_source(folder)


def test_f32_round_trip_is_bit_exact(tiny_llama, tiny_gguf):
    path = tiny_gguf("F32")
    assert detect_format(path) == "gguf"
    hf, src = _hf(tiny_llama), open_source(path)
    assert src.format == "gguf" and src.files == [path]
    assert [t.name for t in src.tensors()] and {t.name for t in src.tensors()} == {t.name for t in hf.tensors()}
    shapes = {t.name: t.shape for t in hf.tensors()}
    for t in src.tensors():
        assert t.shape == shapes[t.name], t.name
        assert np.array_equal(src.load(t.name), hf.load(t.name)), t.name
        raw = src.load_raw(t.name)
        assert raw.dtype is DType.F32 and np.array_equal(raw.data, hf.load(t.name))
    assert src.notes == []


def test_q_and_k_really_are_permuted_on_disk(tiny_llama, tiny_gguf):
    """Guards the test above: without un-permuting, Q/K would not match."""
    reader = gguf.GGUFReader(tiny_gguf("F32"))
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    hf = _hf(tiny_llama)
    q = hf.load("model.layers.0.self_attn.q_proj.weight")
    k = hf.load("model.layers.0.self_attn.k_proj.weight")
    assert not np.array_equal(stored["blk.0.attn_q.weight"], q)
    assert np.array_equal(stored["blk.0.attn_q.weight"], permute(q, 4, 4))
    assert np.array_equal(stored["blk.0.attn_k.weight"], permute(k, 4, 2))


@pytest.mark.parametrize("n_head,rows,cols", [(4, 64, 8), (9, 576, 3), (3, 192, 5), (1, 2, 1)])
def test_unpermute_inverts_llama_cpp_permute(n_head, rows, cols):
    w = np.random.default_rng(n_head).standard_normal((rows, cols)).astype(np.float32)
    assert np.array_equal(permute(w, n_head)[unpermute_rows(rows, n_head)], w)


def test_f16_gguf_equals_f16_rounding(tiny_llama, tiny_gguf):
    hf, src = _hf(tiny_llama), open_source(tiny_gguf("F16"))
    name = "model.layers.1.self_attn.k_proj.weight"
    assert np.array_equal(src.load(name), hf.load(name).astype(np.float16).astype(np.float32))
    raw = src.load_raw(name)
    assert raw.dtype is DType.F16 and raw.data.dtype == np.float16 and raw.shape == (32, 64)


def test_q8_0_raw_blocks_are_unpermuted_rows(tiny_llama, tiny_gguf):
    hf, src = _hf(tiny_llama), open_source(tiny_gguf("Q8_0"))
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"]:
        w = hf.load(name)
        raw = src.load_raw(name)
        assert raw.dtype is DType.Q8_0 and raw.shape == w.shape
        assert raw.data.dtype == np.uint8 and raw.data.shape == (w.shape[0], DType.Q8_0.row_bytes(w.shape[1]))
        # quantizing the HF rows directly gives the same blocks: Q8_0 blocks never straddle rows
        assert np.array_equal(raw.data, quantize(w, GT.Q8_0))
        assert np.array_equal(dequantize(raw.data, GT.Q8_0), src.load(name))


def test_q4_1_is_dequantized_like_gguf_py(tiny_gguf):
    path = tiny_gguf("Q4_1")
    src = open_source(path)
    assert src.notes == ["Q4_1 tensors dequantized to F32 (no portable .apr code)"]
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    name = "model.layers.1.self_attn.q_proj.weight"
    assert src.load_raw(name) is None
    assert {t.name: t.dtype for t in src.tensors()}[name] == "Q4_1"
    expected = dequantize(stored["blk.1.attn_q.weight"].data, GT.Q4_1)[unpermute_rows(64, 4)]
    assert np.array_equal(src.load(name), expected)
    norm = src.load_raw("model.norm.weight")
    assert norm.dtype is DType.F32  # 1-D tensors stay F32, as convert_hf_to_gguf keeps them


def _write_kquant_gguf(path, rng):
    """A one-layer llama GGUF whose Q (Q6_K) and K (Q4_K) rows are 256 wide, with random blocks
    (gguf-py cannot quantize K-quants, but the bytes of any block decode)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_vocab_size(64)
    blocks = {}
    for name, qt, rows in [("blk.0.attn_q.weight", GT.Q6_K, 256), ("blk.0.attn_k.weight", GT.Q4_K, 128)]:
        bsize = gguf.GGML_QUANT_SIZES[qt][1]
        data = rng.integers(0, 256, size=(rows, bsize), dtype=np.uint8)
        scale = np.full((rows, 1), 0.01, dtype=np.float16).view(np.uint8)
        if qt == GT.Q6_K:
            data[:, -2:] = scale  # d is the last field of a Q6_K block
        else:
            data[:, 0:2], data[:, 2:4] = scale, scale  # d, dmin lead a Q4_K block
        w.add_tensor(name, data, raw_dtype=qt)
        blocks[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return blocks


def test_kquant_raw_rows_unpermuted_at_block_row_granularity(tmp_path):
    path = tmp_path / "kq.gguf"
    blocks = _write_kquant_gguf(path, np.random.default_rng(0))
    src = open_source(path)
    for hf_name, g_name, qt, dt, heads in [
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", GT.Q6_K, DType.Q6_K, 4),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", GT.Q4_K, DType.Q4_K, 2),
    ]:
        raw = src.load_raw(hf_name)
        rows = blocks[g_name].shape[0]
        assert raw.dtype is dt and raw.shape == (rows, 256)
        assert np.array_equal(raw.data, blocks[g_name][unpermute_rows(rows, heads)])
        values = src.load(hf_name)
        assert np.array_equal(values, dequantize(blocks[g_name], qt)[unpermute_rows(rows, heads)])
        assert np.array_equal(values, dequantize(raw.data, qt))
        assert permute(values, 4, heads).tobytes() == dequantize(blocks[g_name], qt).tobytes()


def test_config_is_synthesized(tiny_llama, tiny_gguf):
    cfg = open_source(tiny_gguf("F32")).config
    original = json.loads((tiny_llama / "config.json").read_text())
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "rms_norm_eps", "rope_theta", "max_position_embeddings", "vocab_size", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id", "model_type", "architectures"]:
        assert cfg[key] == original[key], key


def test_tied_model_has_no_lm_head(tiny_llama_tied, tmp_path):
    from tiny_models import make_tiny_gguf

    src = open_source(make_tiny_gguf(tiny_llama_tied, tmp_path / "tied.gguf"))
    assert src.config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in {t.name for t in src.tensors()}


def test_tokenizer_matches_the_original(tiny_llama, tiny_gguf):
    src = open_source(tiny_gguf("F32"))
    ours = Tokenizer.from_str(src.tokenizer_json)
    original = Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))
    assert ours.get_vocab() == original.get_vocab()
    for text in PROMPTS:
        ids = original.encode(text).ids
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == original.decode(ids, skip_special_tokens=False)
    original_cfg = json.loads((tiny_llama / "tokenizer_config.json").read_text())
    for key in ["bos_token", "eos_token", "pad_token", "chat_template", "add_bos_token"]:
        assert src.tokenizer_config[key] == original_cfg[key], key


def test_tokenizer_matches_transformers_gguf_tokenizer(tiny_gguf):
    from transformers import AutoTokenizer

    path = tiny_gguf("F32")
    oracle = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = Tokenizer.from_str(open_source(path).tokenizer_json)
    for text in PROMPTS:
        ids = oracle(text)["input_ids"]
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == oracle.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("with_merges", [True, False])
def test_sentencepiece_tokenizer_matches_transformers(tmp_path, with_merges):
    from transformers import AutoTokenizer

    from tiny_models import make_tiny_spm_gguf

    path = make_tiny_spm_gguf(tmp_path / "spm.gguf", with_merges=with_merges)
    oracle = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    src = open_source(path)
    ours = Tokenizer.from_str(src.tokenizer_json)
    assert src.tokenizer_config["add_bos_token"] is True and src.tokenizer_config["bos_token"] == "<s>"
    for text in [*PROMPTS, "unseen ☃ glyph", " leading space"]:
        ids = oracle(text)["input_ids"]
        assert ids[0] == 1  # <s>
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=True) == oracle.decode(ids, skip_special_tokens=True), text


def _one_line_naming(err, path):
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:"), msg
    return msg


@pytest.mark.parametrize("cut", [10, 200, 3000, -100])
def test_truncated_gguf(tiny_gguf, tmp_path, cut):
    f = tmp_path / "cut.gguf"
    f.write_bytes(tiny_gguf("F32").read_bytes()[:cut])
    with pytest.raises(FormatError) as e:
        open_source(f)
    _one_line_naming(e, f)


def test_gguf_bad_magic(tiny_gguf, tmp_path):
    f = tmp_path / "bad.gguf"
    f.write_bytes(b"GGML" + tiny_gguf("F32").read_bytes()[4:])
    with pytest.raises(FormatError) as e:
        open_source(f)
    _one_line_naming(e, f)


def test_unsupported_architecture(tmp_path):
    f = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(f, "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError) as e:
        open_source(f)
    assert "mamba" in _one_line_naming(e, f)


def test_unsupported_tokenizer_model(tmp_path):
    f = tmp_path / "t5.gguf"
    w = gguf.GGUFWriter(f, "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("t5")  # Unigram (llama.cpp's UGM) is not read; "bert" WordPiece is
    w.add_token_list(["[PAD]", "a"])
    w.add_tensor("token_embd.weight", np.zeros((2, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError) as e:
        open_source(f)
    assert "'t5'" in _one_line_naming(e, f)
