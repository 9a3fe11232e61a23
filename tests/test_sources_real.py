"""The GGUF source on the real SmolLM2-135M-Instruct Q4_1 file, with transformers' own GGUF loader
as the oracle (names, shapes, values, tokenizer), and the HF folder derived from it."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from apr_qa.dtypes import DType
from apr_qa.sources import open_source
from tiny_models import TOKENIZER_PROMPTS

pytestmark = pytest.mark.real_model

# HuggingFaceTB/SmolLM2-135M-Instruct config.json (the values a faithful synthesis must give)
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05, "rope_theta": 100000, "max_position_embeddings": 8192, "vocab_size": 49152,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "attention_bias": False, "mlp_bias": False,
}


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    src = open_source(smollm2_gguf)
    yield src
    src.close()


@pytest.fixture(scope="module")
def hf_gguf_model(smollm2_gguf):
    """transformers' own reading of the same GGUF (loaded once)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                 dtype=torch.float32)
    return model.eval()


def test_config_matches_real_smollm2(smollm2):
    for key, value in SMOLLM2_CONFIG.items():
        assert smollm2.config[key] == value, key
    assert smollm2.notes == ["Q4_1 tensors dequantized to F32 (no portable .apr code)"]


def test_tensors_equal_transformers_gguf_loader(smollm2, hf_gguf_model):
    state = hf_gguf_model.state_dict()
    names = {t.name for t in smollm2.tensors()}
    assert names | {"lm_head.weight"} == set(state)  # transformers materialises the tied head
    for t in smollm2.tensors():
        expected = state[t.name].numpy()
        got = smollm2.load(t.name)
        assert got.shape == t.shape == expected.shape, t.name
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=t.name)


def test_raw_payloads(smollm2):
    emb = smollm2.load_raw("model.embed_tokens.weight")
    assert emb.dtype is DType.Q8_0 and emb.shape == (49152, 576) and emb.data.shape == (49152, 612)
    assert smollm2.load_raw("model.layers.0.self_attn.q_proj.weight") is None  # Q4_1
    assert smollm2.load_raw("model.norm.weight").dtype is DType.F32


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def test_tokenizer_equals_transformers_gguf_tokenizer(smollm2, hf_gguf_tokenizer):
    oracle = hf_gguf_tokenizer
    ours = Tokenizer.from_str(smollm2.tokenizer_json)
    assert ours.get_vocab_size() == 49152
    for text in [*TOKENIZER_PROMPTS, "x1 a2b 100% v2.0 H2O", "    indented\n\tcode()\r\n", "¿Qué tal? 👍🏽 ok"]:
        ids = oracle(text)["input_ids"]
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == oracle.decode(ids, skip_special_tokens=False)
    cfg = smollm2.tokenizer_config
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert cfg["add_bos_token"] is False and "<|im_start|>assistant" in cfg["chat_template"]


def test_derived_folder_generates_like_the_gguf(smollm2_derived, hf_gguf_model, hf_gguf_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_derived)
    model = AutoModelForCausalLM.from_pretrained(smollm2_derived, dtype=torch.float32).eval()
    gguf_tok = hf_gguf_tokenizer
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tok(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        ours = model.generate(ids, max_new_tokens=8, do_sample=False)
        theirs = hf_gguf_model.generate(ids, max_new_tokens=8, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    assert "Paris" in tok.decode(ours[0][ids.shape[1]:])
