"""The registry itself: discovery, one owner per name, and documentation that matches it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apr_qa.arch import architecture_for, families, family_for_gguf, family_of, supported
from apr_qa.errors import UnsupportedError

ROOT = Path(__file__).resolve().parents[1]


def _doc_rows(path: Path) -> dict[str, tuple[set[str], str]]:
    """family -> (HF names, GGUF arch) from the first architecture table of a Markdown file."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[1].startswith("`") and cells[2] in {"-"} | {f"`{n}`" for n in _gguf_names()}:
            rows[cells[0]] = (set(re.findall(r"`([^`]+)`", cells[1].split("(")[0])), cells[2].strip("`"))
    return rows


def _gguf_names() -> set[str]:
    return {f.gguf_name_of_arch() for f in families() if f.gguf_arch}


@pytest.mark.parametrize("doc", ["README.md", "docs/architectures.md"])
def test_docs_list_every_family_as_registered(doc):
    rows = _doc_rows(ROOT / doc)
    assert set(rows) == {f.family for f in families()}, doc
    for family in families():
        names, gguf_arch = rows[family.family]
        assert names == set(family.hf_names), (doc, family.family)
        assert gguf_arch == (family.gguf_name_of_arch() or "-"), (doc, family.family)


def test_lookup_by_name_model_type_and_gguf():
    assert family_of({"architectures": ["MistralForCausalLM"]}).family == "Llama"
    assert family_of({"model_type": "bert"}).family == "BERT"  # sentence-transformers exports may omit architectures
    assert family_for_gguf("phi2").family == "Phi"
    assert "GPT2LMHeadModel" in supported() and len(families()) >= 11
    with pytest.raises(UnsupportedError, match=r"GPTJForCausalLM is not supported \(supported: .*LlamaForCausalLM"):
        family_of({"architectures": ["GPTJForCausalLM"]}, "somewhere/config.json")
    with pytest.raises(UnsupportedError, match="mamba"):
        family_for_gguf("mamba")


def test_hyperparams_are_normalised_across_spellings():
    gpt2 = architecture_for({"architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_layer": 2, "n_head": 4,
                             "n_positions": 128, "vocab_size": 100}).hp
    llama = architecture_for({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 128,
                              "vocab_size": 100}).hp
    assert (gpt2.hidden_size, gpt2.num_layers, gpt2.head_dim, gpt2.intermediate_size) == (64, 2, 16, 256)
    assert (gpt2.norm, gpt2.positions, gpt2.attention) == ("layer", "learned", "multi-head")
    assert (llama.norm, llama.positions, llama.attention) == ("rms", "rope", "multi-query")


def test_a_broken_config_is_one_line_naming_the_file():
    with pytest.raises(UnsupportedError) as not_ours:
        architecture_for({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "intermediate_size": 8, "vocab_size": 10,
                          "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "m/config.json")
    assert "yarn" in str(not_ours.value)
    with pytest.raises(Exception) as bad:
        architecture_for({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 3, "num_key_value_heads": 2, "intermediate_size": 8,
                          "vocab_size": 10}, "m/config.json")
    assert str(bad.value).startswith("m/config.json: ") and "\n" not in str(bad.value)


def test_quantization_exemptions_follow_llama_quant_through_gguf_names():
    """llama-quant.cpp keeps position embeddings and token types in float; BertForMaskedLM's "bert."
    prefix is stripped before the GGUF name is looked up, as llama.cpp's converter strips it."""
    bert = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
            "vocab_size": 100}
    mlm = architecture_for({**bert, "architectures": ["BertForMaskedLM"]})
    base = architecture_for({**bert, "architectures": ["BertModel"]})
    for arch, prefix in ((mlm, "bert."), (base, "")):
        assert arch.keep_unquantized(prefix + "embeddings.position_embeddings.weight")
        assert arch.keep_unquantized(prefix + "embeddings.token_type_embeddings.weight")
        assert not arch.keep_unquantized(prefix + "embeddings.word_embeddings.weight")
        assert not arch.keep_unquantized(prefix + "encoder.layer.0.attention.self.query.weight")
