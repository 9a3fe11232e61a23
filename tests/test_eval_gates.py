"""Gate decisions and the I-5 comparison on crafted inputs (no runtime involved)."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, normalizers

from apr_qa.evaluation import gates, tokenizer_check
from apr_qa.evaluation.logit_consistency import greedy_identity
from apr_qa.evidence import exit_code


def i1_records(pairs):
    return {f"p{i}": greedy_identity(m, r) for i, (m, r) in enumerate(pairs)}


LATE_DIVERGENCE = i1_records([([1, 2, 3], [1, 2, 3]), ([4, 5, 6], [4, 5, 9])])
FIRST_DIVERGENCE = i1_records([([1, 2, 3], [1, 2, 3]), ([7, 5, 6], [4, 5, 6])])


@pytest.mark.parametrize("level, records, passed, gate_level", [
    ("f32", LATE_DIVERGENCE, False, "fail"),
    ("source", i1_records([([1, 2], [1, 2])]), True, "fail"),
    ("f16", LATE_DIVERGENCE, True, "fail"),      # only the first token must match
    ("bf16", FIRST_DIVERGENCE, False, "fail"),
    ("q8_0", LATE_DIVERGENCE, False, "warn"),    # informational for quantized variants
    ("q4_k", FIRST_DIVERGENCE, False, "warn"),
])
def test_i1_expectation_depends_on_the_variant(level, records, passed, gate_level):
    g = gates.gate_i1_generation(records, level)
    assert (g.passed, g.level) == (passed, gate_level)
    assert "earliest divergence" in g.measured


def test_spec_levels_and_thresholds():
    assert not gates.gate_t4_generation({"value": 0.5, "successes": 5, "n": 10}).passed  # "> 50 %"
    assert gates.gate_t4_generation({"value": 0.6, "successes": 6, "n": 10}).passed
    assert not gates.gate_t4_generation(None).passed
    assert gates.gate_t2(29.9, 0, 30.0).passed and not gates.gate_t2(1.0, 1, 30.0).passed
    assert not gates.gate_t3(8 * 2**30, 8 * 2**30).passed
    assert not gates.gate_t1(17, 18).passed and gates.gate_t1(18, 18).passed
    assert not gates.gate_t1(0, 18, "RuntimeError: boom").passed
    levels = {g.id: g.level for g in [gates.gate_t1(1, 1), gates.gate_t2(1, 0, 2), gates.gate_t3(1, 2),
                                       gates.gate_t4_generation(None)]}
    assert levels == {"T1": "fail", "T2": "warn", "T3": "warn", "T4": "fail"}
    t2 = gates.gate_t2(1.0, 1, 30.0)
    assert not t2.passed and t2.level == "warn"
    assert exit_code([t2, gates.gate_t3(3, 2)]) == 0            # warnings only
    assert exit_code([t2, gates.gate_t4_generation(None)]) == 1  # a fail-level gate tripped
    assert not hasattr(gates, "gate_t5_generation")  # decoders' top-k agreement is information, not a gate


def test_encoder_i1_is_exact_at_full_precision():
    exact = {"max_abs_diff": 0.0, "cosine_min": 1.0}
    close = {"max_abs_diff": 1e-4, "cosine_min": 0.99995}
    assert gates.gate_i1_embedding(exact, "source", 0.99999).passed
    assert not gates.gate_i1_embedding(close, "f32", 0.99999).passed
    assert gates.gate_i1_embedding(close, "f16", 0.999).passed
    assert gates.gate_i1_embedding(close, "q4_0", 0.99999).level == "warn"


def _tokenizer(lowercase: bool):
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "Hello": 3, "!": 4, " ": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    return _Wrap(tok)


class _Wrap:
    """The runtime tokenizer's encode/decode signature over a `tokenizers.Tokenizer`."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text, add_special_tokens=True):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=True):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_i5_compare_catches_a_different_tokenizer():
    texts = ["Hello world", "hello", "Hello  world"]
    same = tokenizer_check.compare(tokenizer_check.probe(_tokenizer(False), texts),
                                   tokenizer_check.probe(_tokenizer(False), texts))
    # whitespace pre-tokenization loses the double space: reported as lossy, not a mismatch
    assert same["passed"] and same["reference_lossy_texts"] == ["Hello  world"] and not same["lossless"]
    differs = tokenizer_check.compare(tokenizer_check.probe(_tokenizer(True), texts),
                                      tokenizer_check.probe(_tokenizer(False), texts))
    assert not differs["passed"]
    bad = differs["mismatches"][0]
    assert bad["text"] == "Hello world" and "token ids differ" in bad["problems"]
    assert not gates.gate_i5(differs).passed and gates.gate_i5(same).passed


def test_i5_requires_the_model_to_round_trip_what_the_reference_round_trips():
    ref = [{"text": "hello", "ids": [1], "plain_ids": [1], "decoded": "hello"}]
    model = [{"text": "hello", "ids": [1], "plain_ids": [1], "decoded": "hello"}]
    assert tokenizer_check.compare(model, ref)["passed"]
    model = [{"text": "hello", "ids": [1], "plain_ids": [1], "decoded": "hello "}]
    out = tokenizer_check.compare(model, ref)
    assert not out["passed"]
    assert "model does not round-trip a text the reference round-trips" in out["mismatches"][0]["problems"]
