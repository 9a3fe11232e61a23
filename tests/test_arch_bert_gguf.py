"""BERT-family GGUF input (llama.cpp's "bert" architecture), from files written as
convert_hf_to_gguf.py writes them (tests/helpers/tiny_bert_gguf.py):

- the WordPiece tokenizer rebuilt from the phantom-space vocabulary encodes and decodes exactly like
  the original (tiny vocabulary, cased vocabulary, the real all-MiniLM-L6-v2 one);
- a BERT GGUF reads back as the HF folder's tensors and hyperparameters (F32 bit-exact, F16 within
  rounding) and runs alike; the real MiniLM too, with its mean pooling recovered from pooling_type;
- DistilBERT, which llama.cpp writes as BERT without token types, reads as a token-type-less BERT
  that holds the same numbers and runs equal to transformers' DistilBertModel;
- a GGUF BERT (and DistilBERT) converts to q8_0 .apr through every gate against the GGUF source, and G0.
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch

import family_harness as fh
import tiny_bert_gguf as tb
import tiny_encoders as te
import tiny_models
from apr_qa.certify.gateways import g0_integrity
from apr_qa.convert import convert
from apr_qa.evaluation.oracle import RELATIVE_LIMIT
from apr_qa.runtime import load_model
from apr_qa.sources import open_source
from apr_qa.validate import validate

# beyond TOKENIZER_PROMPTS: accents and case, CJK (split per character), punctuation runs, a word
# longer than WordPiece's 100 characters ([UNK]), control characters, the specials in text
EXTRA_TEXTS = [
    "ÉCOLE Über naïve CAFÉ façade", "我想在apple工作1314151天", "...!!!??? ------=======",
    "x" * 101 + " short", "tab\there\x00nul\u200bzero-width", "[CLS] [SEP] [MASK] [PAD] [UNK] [unused1]",
    "unaffable tokenization, wordpieces; don't", "",
]

DISTIL_FORMS = {"distilbert": {}, "distilbert_mlm": {"masked_lm": True}}


def _bert(tiny_dir):
    return tiny_models.once(tiny_dir / "bert", tiny_models.make_tiny_bert)


def _distil(tiny_dir, form: str):
    return tiny_models.once(tiny_dir / form, lambda p: te.make_tiny_distilbert(p, **DISTIL_FORMS[form]))


def _gguf(hf_dir, folder, outtype: str = "F32"):
    return tiny_models.once(folder / f"{hf_dir.name}.{outtype}.gguf",
                            lambda p: tb.make_bert_gguf(hf_dir, p, outtype=outtype))


def _meta(path) -> dict:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


@pytest.fixture(scope="module")
def minilm_gguf(minilm_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("minilm_gguf")
    return {t: _gguf(minilm_dir, folder, t) for t in ("F32", "F16")}


def _same_tokenization(hf_dir, gguf_path, texts, type_ids: bool = False) -> int:
    """Encodings (single and pair) and decodes of the rebuilt tokenizer == the original's; with
    `type_ids`, the pair's segment ids too (BERT's [CLS] A [SEP] B [SEP]:1; the tiny test vocabulary's
    template leaves the last [SEP] in segment 0). Returns how many texts were compared."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    original, reference = Tokenizer.from_file(str(hf_dir / "tokenizer.json")), AutoTokenizer.from_pretrained(hf_dir)
    # MiniLM's tokenizer.json pads and truncates to 128 (sentence-transformers' batching); a GGUF
    # records neither, and the runtime pads itself
    original.no_padding()
    original.no_truncation()
    src = open_source(gguf_path)
    try:
        ours = Tokenizer.from_str(src.tokenizer_json)
    finally:
        src.close()
    for text in texts:
        want = original.encode(text)
        got = ours.encode(text)
        assert got.ids == want.ids, f"{text!r}:\n ours {got.tokens}\n orig {want.tokens}"
        assert got.ids == reference(text)["input_ids"]
        assert ours.encode(text, "second part").ids == original.encode(text, "second part").ids
        if type_ids:
            assert ours.encode(text, "second part").type_ids == original.encode(text, "second part").type_ids
        for skip in (True, False):
            assert ours.decode(got.ids, skip_special_tokens=skip) == original.decode(want.ids, skip_special_tokens=skip)
    return len(texts)


# --- tokenizer -------------------------------------------------------------------------------------

def test_vocabulary_is_stored_with_phantom_spaces(tiny_dir, tmp_path):
    """What the reader undoes: "##x" stored as "x", word starts as "▁x", CONTROL tokens unchanged;
    SpecialVocab's [CLS] as bos, [SEP] as eos and separator."""
    hf_dir = _bert(tiny_dir)
    meta = _meta(_gguf(hf_dir, tmp_path))
    vocab = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    stored = meta["tokenizer.ggml.tokens"]
    assert stored[vocab["the"]] == "\u2581the" and stored[vocab["##e"]] == "e" and stored[vocab["[CLS]"]] == "[CLS]"
    assert meta["tokenizer.ggml.model"] == "bert" and meta["tokenizer.ggml.token_type_count"] == 2
    cls_sep = (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.seperator_token_id"])
    assert cls_sep == (vocab["[CLS]"], vocab["[SEP]"])


def test_tiny_tokenizer_matches_the_original(tiny_dir, tmp_path):
    hf_dir = _bert(tiny_dir)
    assert _same_tokenization(hf_dir, _gguf(hf_dir, tmp_path), tiny_models.TOKENIZER_PROMPTS + EXTRA_TEXTS)
    src = open_source(_gguf(hf_dir, tmp_path))
    try:
        assert src.tokenizer_config["do_lower_case"] is True
        assert (src.tokenizer_config["cls_token"], src.tokenizer_config["sep_token"]) == ("[CLS]", "[SEP]")
    finally:
        src.close()


def _vocab_only_gguf(hf_dir, path, vocab_size: int):
    writer = gguf.GGUFWriter(path, "bert")
    tb.add_wordpiece_vocab(writer, hf_dir, vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_padded_vocabulary_stays_uncased(tiny_dir, tmp_path):
    """config vocab_size beyond the tokenizer's: the converter fills "[PAD{i}]" (UNUSED) tokens, whose
    capitals say nothing about case."""
    from tokenizers import Tokenizer

    from apr_qa.sources.gguf_tokenizer import build_tokenizer

    hf_dir = _bert(tiny_dir)
    original = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    size = original.get_vocab_size() + 3
    meta = _meta(_vocab_only_gguf(hf_dir, tmp_path / "padded.gguf", size))
    assert meta["tokenizer.ggml.tokens"][-1] == f"\u2581[PAD{size - 1}]"
    text, config = build_tokenizer(meta, [])
    assert config["do_lower_case"] is True
    ours = Tokenizer.from_str(text)
    for prompt in tiny_models.TOKENIZER_PROMPTS:
        assert ours.encode(prompt).ids == original.encode(prompt).ids, prompt


def test_cased_vocabulary_is_not_lower_cased(tmp_path):
    """A GGUF has no do_lower_case; a vocabulary with upper-case pieces came from a cased tokenizer,
    which must keep case (and accents) to encode like the original."""
    import collections
    import re

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = collections.Counter(w for line in tiny_models.CORPUS for w in re.findall(r"\w+|[^\w\s]", line))
    chars = sorted({c for w in words for c in w})
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:60]
    tokens = [*specials, *chars, *("##" + c for c in chars), *frequent]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]", pair="[CLS] $A:0 [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    folder = tmp_path / "cased"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    tiny_models.write_json(folder / "tokenizer_config.json", {**te.TOKENIZER_CONFIG, "do_lower_case": False})
    tiny_models.write_json(folder / "config.json", {"model_type": "bert", "vocab_size": len(tokens)})
    path = _vocab_only_gguf(folder, tmp_path / "cased.gguf", len(tokens))

    from apr_qa.sources.gguf_tokenizer import build_tokenizer

    text, config = build_tokenizer(_meta(path), [])
    ours = Tokenizer.from_str(text)
    assert config["do_lower_case"] is False
    for prompt in tiny_models.TOKENIZER_PROMPTS + EXTRA_TEXTS:
        assert ours.encode(prompt).ids == tok.encode(prompt).ids, prompt
    assert ours.encode("The Capital").tokens[1:3] == ["The", "C"]


def test_minilm_tokenizer_matches_the_original(minilm_dir, minilm_gguf):
    meta = _meta(minilm_gguf["F32"])
    assert meta["tokenizer.ggml.pre"] == "jina-v2-en"  # the converter's hash of this WordPiece tokenizer
    assert len(meta["tokenizer.ggml.tokens"]) == 30522
    corpus = tiny_models.TOKENIZER_PROMPTS + EXTRA_TEXTS + tiny_models.CORPUS
    assert _same_tokenization(minilm_dir, minilm_gguf["F32"], corpus, type_ids=True) == len(corpus)


# --- BERT ----------------------------------------------------------------------------------------------

def test_bert_gguf_reads_back_exactly(tiny_dir, tmp_path):
    hf_dir = _bert(tiny_dir)
    path = _gguf(hf_dir, tmp_path)
    fh.gguf_reads_back(hf_dir, path, exact=True)
    src = open_source(path)
    try:
        assert src.config["type_vocab_size"] == 2 and "embeddings.token_type_embeddings.weight" in src.arch.tensors()
        assert src.pooling_config is None  # no sentence-transformers Pooling module -> no pooling_type
    finally:
        src.close()
    a, b = load_model(hf_dir), load_model(path)
    for text in fh.PROMPTS:
        ids = a.tokenizer.encode(text)
        assert b.tokenizer.encode(text) == ids
        assert torch.equal(b.hidden_states([ids])[0], a.hidden_states([ids])[0])


def test_bert_f16_gguf_reads_back(tiny_dir, tmp_path):
    hf_dir = _bert(tiny_dir)
    path = _gguf(hf_dir, tmp_path, "F16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_q.weight"] == "F16"
    assert types["position_embd.weight"] == types["token_types.weight"] == types["token_embd_norm.weight"] == "F32"
    fh.gguf_reads_back(hf_dir, path, exact=False)


def test_cls_pooling_type_is_recovered(tiny_dir, tmp_path):
    """pooling_type CLS (from a sentence-transformers Pooling module) embeds as the [CLS] state, the
    same as the HF folder with that module."""
    hf_dir = tmp_path / "bert_cls"
    shutil.copytree(_bert(tiny_dir), hf_dir)
    tiny_models.write_json(hf_dir / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    (hf_dir / "1_Pooling").mkdir()
    tiny_models.write_json(hf_dir / "1_Pooling/config.json", {
        "word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    path = _gguf(hf_dir, tmp_path)
    assert _meta(path)["bert.pooling_type"] == gguf.PoolingType.CLS
    a, b = load_model(hf_dir), load_model(path)
    assert a.pooling == b.pooling == "cls"
    ids = a.tokenizer.encode(fh.PROMPTS[0])
    assert torch.equal(b.embed(fh.PROMPTS[:2]), a.embed(fh.PROMPTS[:2]))
    assert torch.equal(b.embed(fh.PROMPTS[:1])[0], b.hidden_states([ids])[0][0])


@pytest.mark.parametrize("outtype", ["F32", "F16"])
def test_minilm_gguf_reads_back(outtype, minilm_dir, minilm_gguf):
    path = minilm_gguf[outtype]
    fh.gguf_reads_back(minilm_dir, path, exact=outtype == "F32")
    a, b = load_model(minilm_dir), load_model(path)
    assert a.pooling == b.pooling == "mean"
    want, got = a.embed(fh.PROMPTS, normalize=True), b.embed(fh.PROMPTS, normalize=True)
    if outtype == "F32":
        assert torch.equal(got, want)
    else:
        assert float(torch.nn.functional.cosine_similarity(got.double(), want.double()).min()) >= 0.9999


# --- DistilBERT: written as BERT without token types ---------------------------------------------

@pytest.mark.parametrize("form", DISTIL_FORMS)
def test_distilbert_gguf_reads_as_bert_without_token_types(form, tiny_dir, tmp_path):
    from transformers import AutoModel

    hf_dir = _distil(tiny_dir, form)
    path = _gguf(hf_dir, tmp_path)
    meta = _meta(path)
    assert "token_types.weight" not in {t.name for t in gguf.GGUFReader(path).tensors}
    assert meta["tokenizer.ggml.token_type_count"] == 1  # written all the same (type_vocab_size absent)

    hf, gg = open_source(hf_dir), open_source(path)
    try:
        assert gg.arch.family == "BERT" and gg.config["type_vocab_size"] == 0
        assert not any("token_type" in n for n in gg.arch.tensors())
        # every DistilBERT encoder tensor is present, under the BERT name of the same GGUF tensor, bit-exact
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, 2)
        to_bert = gg.arch.gguf_to_canonical_names()
        gg_names = {t.name for t in gg.tensors()}
        assert set(to_bert.values()) == gg_names
        used = set()
        for t in hf.tensors():
            if hf.arch.optional(t.name):
                continue
            bert_name = to_bert[names.get_name(t.name.removeprefix("distilbert."), try_suffixes=(".weight", ".bias"))]
            used.add(bert_name)
            assert np.array_equal(gg.load(bert_name), hf.load(t.name)), t.name
        assert used == gg_names
        mine, theirs = hf.arch.hp, gg.arch.hp
        for field in ("hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size", "vocab_size",
                      "max_positions", "norm", "norm_eps", "activation", "gated_mlp", "positions"):
            assert getattr(mine, field) == getattr(theirs, field), field
    finally:
        hf.close()
        gg.close()

    ours, theirs = load_model(path), load_model(hf_dir)
    reference = AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for text in fh.PROMPTS:
        ids = theirs.tokenizer.encode(text)
        assert ours.tokenizer.encode(text) == ids
        with torch.inference_mode():
            want = reference(torch.tensor([ids])).last_hidden_state[0]
        got = ours.hidden_states([ids])[0]
        assert torch.equal(got, theirs.hidden_states([ids])[0])
        assert fh.relative_diff(got, want) <= RELATIVE_LIMIT


# --- GGUF -> .apr through the gates ----------------------------------------------------------------

def _gates_against_gguf(path, tmp_path, variant: str = "q8_0") -> dict:
    apr = tmp_path / f"{path.stem}.{variant}.apr"
    convert(path, apr, variant)
    records = validate(apr, path)
    failed = [f"{r.id}: {r.message}" for r in records if not r.passed]
    assert not failed, failed
    g0 = g0_integrity(apr)
    assert g0.passed, g0.message
    return {"apr": apr, "C8": next(r.measured for r in records if r.id == "C8")}


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_gguf_to_q8_0_passes_every_gate(kind, tiny_dir, tmp_path):
    hf_dir = _bert(tiny_dir) if kind == "bert" else _distil(tiny_dir, "distilbert")
    out = _gates_against_gguf(_gguf(hf_dir, tmp_path), tmp_path)
    quantized, original = load_model(out["apr"]), load_model(hf_dir)
    assert quantized.pooling == "mean"
    cos = torch.nn.functional.cosine_similarity(quantized.embed(fh.PROMPTS).double(),
                                                original.embed(fh.PROMPTS).double())
    assert float(cos.min()) >= 0.99, cos


def test_minilm_gguf_to_q8_0_passes_every_gate(minilm_dir, minilm_gguf, tmp_path):
    out = _gates_against_gguf(minilm_gguf["F32"], tmp_path)
    quantized, original = load_model(out["apr"]), load_model(minilm_dir)
    assert quantized.pooling == "mean"  # pooling_type carried into the .apr
    cos = torch.nn.functional.cosine_similarity(quantized.embed(fh.PROMPTS).double(),
                                                original.embed(fh.PROMPTS).double())
    assert float(cos.min()) >= 0.999, cos
    assert quantized.hp == original.hp


def test_wordpiece_without_cls_or_sep_is_refused(tmp_path):
    from apr_qa.errors import UnsupportedError

    path = tmp_path / "no_cls.gguf"
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_tokenizer_model("bert")
    writer.add_token_list(["[PAD]", "\u2581a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from apr_qa.sources.gguf_tokenizer import build_tokenizer

    with pytest.raises(UnsupportedError, match=r"\[CLS\]/\[SEP\]"):
        build_tokenizer(_meta(path), [])
