"""`describe()` / `format_text()` on files written by the real writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from apr_qa.apr import AprReader, AprWriter, TensorEntry
from apr_qa.dtypes import DType
from apr_qa.inspect import describe, format_text

VOCAB = {f"tok{i}": i for i in range(300)} | {"[UNK]": 300}
TOKENIZER = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]")).to_str()
PLAN = [TensorEntry("model.embed_tokens.weight", DType.Q8_0, (301, 64)),
        TensorEntry("model.norm.weight", DType.F32, (64,)),
        TensorEntry("lm_head.weight", DType.Q8_0, (301, 64)),
        TensorEntry("model.layers.0.mlp.up_proj.weight", DType.F16, (128, 64))]
META = {"name": "tiny", "architecture": "LlamaForCausalLM", "hidden_size": 64,
        "tokenizer.json": TOKENIZER, "tokenizer.merges": ["a b"] * 2000}


def _write(path):
    with AprWriter(path, META, PLAN) as w:
        for e in PLAN:
            w.write(e.name, np.zeros(e.dtype.nbytes(e.shape), np.uint8))


def test_describe(tmp_path):
    path = tmp_path / "m.apr"
    _write(path)
    with AprReader(path) as r:
        desc = describe(r)
    assert desc["path"] == str(path) and desc["file_bytes"] == path.stat().st_size
    h = desc["header"]
    assert h["version"] == "2.0" and h["flags"] == "0x0620"
    assert h["flag_names"] == ["quantized", "has_vocab", "row_major"]
    assert h["tensor_count"] == 4 and h["metadata_offset"] == 64
    assert h["header_crc"] == f"0x{int.from_bytes(path.read_bytes()[40:44], 'little'):08x}"

    meta = desc["metadata"]
    assert meta["name"] == "tiny" and meta["hidden_size"] == 64
    assert meta["tokenizer.json"] == {"present": True, "bytes": len(TOKENIZER.encode()),
                                      "model": "WordLevel", "vocab_size": 301, "added_tokens": 0}
    assert meta["tokenizer.merges"] == {"omitted": True, "type": "list",
                                        "bytes": len(json.dumps(META["tokenizer.merges"])), "items": 2000}

    assert [t["name"] for t in desc["tensors"]] == sorted(e.name for e in PLAN)
    norm = next(t for t in desc["tensors"] if t["name"] == "model.norm.weight")
    assert norm == {"name": "model.norm.weight", "dtype": "F32", "shape": [64], "bytes": 256}

    totals = desc["totals"]
    assert totals["tensor_count"] == 4
    assert totals["parameter_count"] == 2 * 301 * 64 + 64 + 128 * 64
    q8 = 2 * 301 * 2 * 34
    assert totals["bytes_by_dtype"] == {"F16": 128 * 64 * 2, "F32": 256, "Q8_0": q8}
    assert totals["tensors_by_dtype"] == {"F16": 1, "F32": 1, "Q8_0": 2}
    assert totals["tensor_bytes"] == q8 + 256 + 128 * 64 * 2
    json.dumps(desc)  # --json output must be serializable


def test_broken_tokenizer_is_reported_not_fatal(tmp_path):
    path = tmp_path / "m.apr"
    with AprWriter(path, {"tokenizer.json": "{not json"}, []):
        pass
    with AprReader(path) as r:
        summary = describe(r)["metadata"]["tokenizer.json"]
    assert summary["present"] is True and summary["bytes"] == 9
    assert summary["error"].startswith("not a tokenizers JSON: JSONDecodeError")


def test_format_text(tmp_path):
    path = tmp_path / "m.apr"
    _write(path)
    with AprReader(path) as r:
        text = format_text(describe(r))
    lines = text.splitlines()
    assert lines[0] == f"{path} ({path.stat().st_size:,} bytes)"
    assert any(line.split() == ["flag_names", "quantized,", "has_vocab,", "row_major"] for line in lines)
    row = next(line for line in lines if line.startswith("model.layers.0.mlp.up_proj.weight"))
    assert row.split() == ["model.layers.0.mlp.up_proj.weight", "F16", "128x64", "16,384"]
    assert any(line.split() == ["parameters", f"{2 * 301 * 64 + 64 + 128 * 64:,}"] for line in lines)
    assert any(line.split() == ["Q8_0", "2", f"{2 * 301 * 2 * 34:,}"] for line in lines)
    assert TOKENIZER not in text and max(map(len, lines)) < 200  # payloads summarized, cells cut


@pytest.mark.real_model
def test_real_tokenizer_is_summarized(tmp_path, minilm_dir):
    tok = minilm_dir / "tokenizer.json"
    path = tmp_path / "t.apr"
    with AprWriter(path, {"tokenizer.json": tok.read_text()}, []):
        pass
    with AprReader(path) as r:
        summary = describe(r)["metadata"]["tokenizer.json"]
    assert summary["model"] == "WordPiece" and summary["vocab_size"] == 30522
    assert summary["bytes"] == len(tok.read_text().encode("utf-8"))
