"""DistilBERT, ALBERT and MobileBERT through the architecture registry: against transformers (base
layout and the *ForMaskedLM layout with its name prefix and head), each configuration path of
MobileBERT, every variant through the gates and G0, and the configurations refused."""

from __future__ import annotations

import json

import pytest
import torch

import family_harness as fh
import tiny_encoders as te
import tiny_models
from apr_qa.arch import architecture_for
from apr_qa.errors import UnsupportedError

MAKERS = {"distilbert": te.make_tiny_distilbert, "albert": te.make_tiny_albert, "mobilebert": te.make_tiny_mobilebert}

# name -> (family, builder keywords): each takes a path the base form does not
FORMS = {
    "distilbert": ("distilbert", {}),
    "distilbert_mlm": ("distilbert", {"masked_lm": True}),
    "distilbert_sinusoidal": ("distilbert", {"sinusoidal_pos_embds": True}),
    "albert": ("albert", {}),
    "albert_mlm": ("albert", {"masked_lm": True}),
    "albert_one_group": ("albert", {"num_hidden_groups": 1, "inner_group_num": 1, "num_hidden_layers": 2}),
    "mobilebert": ("mobilebert", {}),
    "mobilebert_mlm": ("mobilebert", {"masked_lm": True}),
    # LayerNorm, q/k/v all from the bottleneck, no trigram; a large layer_norm_eps shows whether the
    # two norms transformers builds without it (embeddings, output) get torch's 1e-5 instead
    "mobilebert_layernorm": ("mobilebert", {"normalization_type": "layer_norm", "use_bottleneck_attention": True,
                                            "trigram_input": False, "hidden_act": "gelu", "layer_norm_eps": 0.05}),
    # unshared: q/k/v straight from the hidden states (needs bottleneck size == hidden size)
    "mobilebert_unshared": ("mobilebert", {"key_query_shared_bottleneck": False, "intra_bottleneck_size": 64,
                                           "num_feedforward_networks": 1}),
    "mobilebert_no_bottleneck": ("mobilebert", {"use_bottleneck": False, "embedding_size": 64,
                                                "trigram_input": False, "num_feedforward_networks": 3}),
}


def _make(tiny_dir, form: str):
    family, kwargs = FORMS[form]
    return tiny_models.once(tiny_dir / f"enc_{form}", lambda p: MAKERS[family](p, **kwargs))


@pytest.mark.parametrize("form", list(FORMS))
def test_matches_transformers(form, tiny_dir, tmp_path):
    figures = fh.encoder_matches_transformers(_make(tiny_dir, form), tmp_path)
    assert figures["max_relative_hidden_diff"] <= 1e-4 and figures["min_embedding_cosine"] >= 0.9999


@pytest.mark.parametrize("form", ["distilbert_mlm", "albert", "mobilebert"])
def test_variants_pass_gates(form, tiny_dir, tmp_path):
    fh.variants_pass_gates(_make(tiny_dir, form), tmp_path)


def test_prefixed_layout_is_the_same_model(tiny_dir):
    """*ForMaskedLM folders differ from the base ones only by the name prefix and the head: the
    same seed gives different draws, so compare the table, not the values."""
    for family in ("distilbert", "albert", "mobilebert"):
        base, mlm = (architecture_for(json.loads((_make(tiny_dir, f).joinpath("config.json")).read_text()))
                     for f in (family, f"{family}_mlm"))
        prefix = f"{family}."
        assert {prefix + n: s for n, s in base.tensors().items()} == mlm.tensors()


def test_albert_layers_repeat_shared_objects(tiny_dir):
    """3 layer steps over 2 groups of 2: groups 0, 0, 1 -> 6 layers, 4 distinct objects."""
    from apr_qa.runtime import load_model

    model = load_model(_make(tiny_dir, "albert"))
    layers = model.w.layers
    assert len(layers) == 6 and len({id(layer) for layer in layers}) == 4
    assert layers[0] is layers[2] and layers[1] is layers[3] and layers[4] is not layers[0]


def test_mobilebert_padding_does_not_change_a_sequence(tiny_dir):
    """The trigram embedding must not see a padded position as a neighbour."""
    from apr_qa.runtime import load_model

    model = load_model(_make(tiny_dir, "mobilebert"))
    ids = [model.tokenizer.encode(t) for t in fh.PROMPTS]
    assert len({len(s) for s in ids}) > 1
    for seq, got in zip(ids, model.hidden_states(ids), strict=True):
        assert torch.allclose(got, model.hidden_states([seq])[0], atol=1e-5, rtol=0)


def test_position_and_token_type_tables_stay_float(tiny_dir, tmp_path):
    from apr_qa.apr import AprReader
    from apr_qa.convert import convert

    for form, kept in (("distilbert", ("embeddings.position_embeddings.weight",)),
                       ("albert_mlm", ("albert.embeddings.position_embeddings.weight",
                                       "albert.embeddings.token_type_embeddings.weight")),
                       ("mobilebert", ("embeddings.position_embeddings.weight",
                                       "embeddings.token_type_embeddings.weight"))):
        apr = tmp_path / f"{form}.q8_0.apr"
        convert(_make(tiny_dir, form), apr, "q8_0")
        with AprReader(apr) as reader:
            dtypes = {e.name: e.dtype.name for e in reader.entries}
        assert all(dtypes[n] in ("F32", "F16") for n in kept), {n: dtypes[n] for n in kept}
        word = next(n for n in dtypes if n.endswith("word_embeddings.weight"))
        assert dtypes[word] == "Q8_0"


@pytest.mark.parametrize("family, change, key", [
    ("mobilebert", {"normalization_type": "batch_norm"}, "normalization_type"),
    ("mobilebert", {"key_query_shared_bottleneck": False}, "key_query_shared_bottleneck"),
    ("mobilebert", {"num_attention_heads": 5}, "intra_bottleneck_size"),
    ("mobilebert", {"hidden_act": "mish"}, "hidden_act"),
    ("albert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("albert", {"num_hidden_groups": 4}, "num_hidden_groups"),
    ("distilbert", {"activation": "mish"}, "activation"),
])
def test_unsupported_configurations_are_named(family, change, key):
    config = {"distilbert": te.distilbert_config, "albert": te.albert_config,
              "mobilebert": te.mobilebert_config}[family]()
    with pytest.raises(UnsupportedError, match=key):
        architecture_for({**config, **change}).tensors()


def test_no_gguf_architecture():
    for config in (te.distilbert_config(), te.albert_config(), te.mobilebert_config()):
        arch = architecture_for(config)
        assert arch.gguf_arch is None and arch.gguf_name("embeddings.word_embeddings.weight") is None
        with pytest.raises(UnsupportedError):
            type(arch).config_from_gguf({}, set())
