"""`apr-qa embed`: one vector per text with the model's own pooling, from a folder, GGUF or .apr."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from apr_qa.cli import main
from apr_qa.convert import convert

TEXTS = ["The capital of France is Paris.", "A journey of a thousand miles begins with a single step."]


def _embed(model, tmp_path, *flags) -> dict:
    out = tmp_path / "emb.json"
    assert main(["embed", str(model), *TEXTS, "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def _reference(folder, texts, mode: str = "mean") -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state[0]
        rows.append(hidden[0] if mode == "cls" else hidden.mean(0))
    return torch.stack(rows)


@pytest.mark.real_model
def test_real_minilm_apr_embeds_like_sentence_transformers(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 is mean pooling then L2 normalization (its modules.json)."""
    apr = tmp_path / "minilm.apr"
    convert(minilm_dir, apr, "f32")
    got = _embed(apr, tmp_path, "--normalize")
    assert got["pooling"] == "mean" and got["normalized"] is True
    want = torch.nn.functional.normalize(_reference(minilm_dir, TEXTS), dim=-1)
    vectors = torch.tensor(got["embeddings"])
    assert vectors.shape == (2, 384)
    assert torch.allclose(vectors, want, atol=1e-5)


def test_pooling_config_beside_the_weights_is_followed_and_recorded(tiny_bert, tmp_path, capsys):
    folder = tmp_path / "bert_cls"
    shutil.copytree(tiny_bert, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling/config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                              "pooling_mode_cls_token": True,
                                                              "pooling_mode_mean_tokens": False}))
    apr = tmp_path / "cls.apr"
    convert(folder, apr, "f32")
    assert main(["embed", str(apr), *TEXTS]) == 0  # printed when --json is absent
    printed = json.loads(capsys.readouterr().out)
    assert printed["pooling"] == "cls"
    want = _reference(tiny_bert, TEXTS, "cls")
    assert torch.allclose(torch.tensor(printed["embeddings"]), want, atol=1e-5)
    mean = _embed(tiny_bert, tmp_path)  # the same weights without the pooling config: mean
    assert mean["pooling"] == "mean"
    assert torch.allclose(torch.tensor(mean["embeddings"]), _reference(tiny_bert, TEXTS), atol=1e-5)


def test_embed_refuses_a_decoder(tiny_llama, capsys):
    assert main(["embed", str(tiny_llama), "hello"]) == 2
    assert "embed needs an encoder" in capsys.readouterr().err
