"""Our BERT encoder against transformers' BertModel on a tiny model (with and without the "bert." prefix)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from apr_qa.errors import UnsupportedError
from apr_qa.runtime import load_model

TEXTS = ["The capital of France is Paris.", "Water boils",
         "Tokenizers split text into pieces; each piece maps to an id."]


def reference_outputs(folder, texts):
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # sentence-transformers' mean pooling
    lengths = enc["attention_mask"].sum(1).tolist()
    return [hidden[i, :n] for i, n in enumerate(lengths)], pooled, [enc["input_ids"][i, :n].tolist()
                                                                    for i, n in enumerate(lengths)]


def assert_close(got, want, rel=1e-4):
    spread = (want.max() - want.min()).item()
    assert got.shape == want.shape and (got - want).abs().max().item() <= rel * spread


def check_against_transformers(folder, oracle_folder=None):
    hidden_ref, pooled_ref, ids = reference_outputs(oracle_folder or folder, TEXTS)
    model = load_model(folder)
    assert model.kind == "encoder"
    assert [model.tokenizer.encode(t) for t in TEXTS] == ids
    for got, want in zip(model.hidden_states(ids), hidden_ref, strict=True):
        assert_close(got, want)
    embeddings = model.embed(TEXTS)
    assert embeddings.dtype == torch.float32 and embeddings.shape == pooled_ref.shape
    assert_close(embeddings, pooled_ref)


def test_tiny_bert_matches_transformers(tiny_bert):
    check_against_transformers(tiny_bert)


def test_bert_prefix_and_masked_lm_architecture(tiny_bert, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "prefixed"
    shutil.copytree(tiny_bert, folder)
    state = load_file(folder / "model.safetensors")
    save_file({f"bert.{k}": v for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    check_against_transformers(folder, oracle_folder=tiny_bert)


def test_padding_does_not_change_a_sequence(tiny_bert):
    model = load_model(tiny_bert)
    ids = [model.tokenizer.encode(t) for t in TEXTS]
    together = model.hidden_states(ids)
    for seq, got in zip(ids, together, strict=True):
        assert torch.allclose(got, model.hidden_states([seq])[0], atol=1e-5, rtol=0)


def test_encoder_has_no_chat_template(tiny_bert):
    with pytest.raises(UnsupportedError, match="chat template"):
        load_model(tiny_bert).tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_too_long_input_is_refused(tiny_bert):
    model = load_model(tiny_bert)
    with pytest.raises(UnsupportedError, match="max_position_embeddings"):
        model.hidden_states([[5] * 65])
