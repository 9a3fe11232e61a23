"""SafeTensors source: exact loads (single, sharded, BF16), index validation, corrupt files."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from apr_qa.dtypes import DType
from apr_qa.errors import FormatError
from apr_qa.sources import detect_format, open_source
from apr_qa.sources.safetensors_source import SafetensorsSource


def _reference(folder) -> dict[str, torch.Tensor]:
    """What the safetensors library itself reads from every shard."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize(
    "fixture", ["tiny_llama", "tiny_llama_sharded", "tiny_llama_bf16", "tiny_llama_tied", "tiny_bert"]
)
def test_load_equals_safetensors_library(fixture, request):
    folder = request.getfixturevalue(fixture)
    ref = _reference(folder)
    src = open_source(folder)
    assert src.format == "safetensors" and detect_format(folder) == "safetensors"
    infos = {t.name: t for t in src.tensors()}
    assert set(infos) == set(ref)
    for name, t in ref.items():
        got = src.load(name)
        assert got.dtype == np.float32 and got.shape == tuple(t.shape) == infos[name].shape
        # BF16 -> F32 widening is exact, so equality is bitwise for every dtype here
        assert np.array_equal(got, t.float().numpy()), name
    src.close()


def test_raw_payload_keeps_dtype(tiny_llama_bf16, tiny_llama):
    ref = _reference(tiny_llama_bf16)
    src = open_source(tiny_llama_bf16)
    name = "model.layers.1.mlp.down_proj.weight"
    raw = src.load_raw(name)
    assert raw.dtype is DType.BF16 and raw.data.dtype == np.uint16 and raw.shape == (64, 128)
    assert np.array_equal(raw.data, ref[name].view(torch.int16).numpy().view(np.uint16))
    assert src.tensors()[0].dtype == "BF16"
    raw32 = open_source(tiny_llama).load_raw(name)
    assert raw32.dtype is DType.F32 and raw32.data.dtype == np.float32


def test_side_files(tiny_llama_sharded):
    src = open_source(tiny_llama_sharded)
    assert src.config["num_key_value_heads"] == 2 and src.config["num_attention_heads"] == 4
    assert json.loads(src.tokenizer_json)["model"]["type"] == "BPE"
    assert "<|im_start|>" in src.tokenizer_config["chat_template"]
    names = sorted(f.name for f in src.files)
    assert names == sorted([
        "config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
    ])


def test_single_file_path(tiny_llama):
    src = open_source(tiny_llama / "model.safetensors")
    assert detect_format(tiny_llama / "model.safetensors") == "safetensors"
    assert len(src.tensors()) == len(_reference(tiny_llama))


def _copy(folder, tmp_path):
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def _one_line_naming(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:"), msg
    return msg


def test_corrupt_header_json(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path)
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:9] = b"["  # the header JSON no longer parses as an object
    data[9:14] = b"\x00\xff\x00\xff\x00"
    f.write_bytes(data)
    with pytest.raises(FormatError) as e:
        open_source(d)
    assert "header JSON" in _one_line_naming(e, f)


def test_truncated_file(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(FormatError) as e:
        open_source(d)
    assert "outside" in _one_line_naming(e, f)


def test_header_length_past_end(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    f = d / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(FormatError) as e:
        open_source(d)
    _one_line_naming(e, f)


def test_size_disagrees_with_shape(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    f = d / "model.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(FormatError) as e:
        open_source(d)
    assert "'w'" in _one_line_naming(e, f)


def test_missing_shard(tiny_llama_sharded, tmp_path):
    d = _copy(tiny_llama_sharded, tmp_path)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FormatError) as e:
        open_source(d)
    assert "missing" in _one_line_naming(e, d / "model-00002-of-00003.safetensors")


def test_index_lists_tensor_absent_from_shard(tiny_llama_sharded, tmp_path):
    d = _copy(tiny_llama_sharded, tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError) as e:
        open_source(d)
    msg = _one_line_naming(e, d / "model-00001-of-00003.safetensors")
    assert "model.layers.9.mlp.up_proj.weight" in msg


def test_missing_or_bad_config(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(FormatError) as e:
        open_source(d)
    _one_line_naming(e, d / "config.json")
    (d / "config.json").unlink()
    with pytest.raises(FormatError, match="config.json is missing"):
        open_source(d)


def test_nothing_recognised(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(FormatError) as e:
        detect_format(tmp_path)
    _one_line_naming(e, tmp_path)
    with pytest.raises(FormatError) as e:
        detect_format(tmp_path / "readme.txt")
    _one_line_naming(e, tmp_path / "readme.txt")
    with pytest.raises(FormatError, match="no such file"):
        open_source(tmp_path / "absent")


@pytest.mark.real_model
def test_real_minilm_equals_safetensors_library(minilm_dir):
    ref = load_file(minilm_dir / "model.safetensors")
    src = SafetensorsSource(minilm_dir)  # the reader itself: every stored tensor, buffers included
    assert src.config["model_type"] == "bert" and src.tokenizer_json is not None
    assert {t.name for t in src.tensors()} == set(ref)
    for name, t in ref.items():
        assert np.array_equal(src.load(name), t.float().numpy()), name
    canonical = open_source(minilm_dir)  # what the stack sees: parameters only
    assert {t.name for t in canonical.tensors()} == set(ref) - {"embeddings.position_ids"}
    assert any("embeddings.position_ids" in note for note in canonical.notes)
