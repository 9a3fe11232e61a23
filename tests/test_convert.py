"""`apr-qa convert` on tiny generated models: dtype policy, metadata, determinism, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from apr_qa.apr import AprReader
from apr_qa.cli import main
from apr_qa.dtypes import QUANT_LEVELS, DType
from apr_qa.fsutil import sha256_file


def convert(src, out, quant, *extra):
    assert main(["convert", str(src), str(out), "--quant", quant, *extra]) == 0
    return out


@pytest.mark.parametrize("quant", list(QUANT_LEVELS))
def test_every_level_stores_matrices_in_its_dtype_and_vectors_in_f32(tiny_llama, tmp_path, quant):
    out = convert(tiny_llama, tmp_path / "m.apr", quant)
    with AprReader(out) as r:
        for e in r.entries:
            want = QUANT_LEVELS[quant].weights if len(e.shape) >= 2 else DType.F32
            # a mixture's recipe moves some matrices to other types (tests/test_quant_q4km_llamacpp.py)
            assert e.dtype == want or (QUANT_LEVELS[quant].recipe and len(e.shape) >= 2), e.name
        assert r.metadata["quantization"]["level"] == quant
        assert r.metadata["quantization"]["tensor_dtypes"][QUANT_LEVELS[quant].weights.name] > 0


def test_f32_from_safetensors_is_exact(tiny_llama, tmp_path):
    out = convert(tiny_llama, tmp_path / "m.apr", "f32")
    original = load_file(tiny_llama / "model.safetensors")
    with AprReader(out) as r:
        assert sorted(e.name for e in r.entries) == sorted(original)
        for name, value in original.items():
            np.testing.assert_array_equal(r.load(name), value)


def test_sharded_and_single_file_sources_give_the_same_tensors(tiny_llama, tiny_llama_sharded, tmp_path):
    a = convert(tiny_llama, tmp_path / "a.apr", "q8_0")
    b = convert(tiny_llama_sharded, tmp_path / "b.apr", "q8_0")
    with AprReader(a) as ra, AprReader(b) as rb:
        assert [e.name for e in ra.entries] == [e.name for e in rb.entries]
        for e in ra.entries:
            assert bytes(ra.raw(e.name)) == bytes(rb.raw(e.name)), e.name
        # provenance lists every shard and the index
        files = {f["path"] for f in rb.metadata["provenance"]["files"]}
        assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) == 3


def test_gguf_source_converts_back_to_the_hf_weights(tiny_llama, tiny_gguf, tmp_path):
    out = convert(tiny_gguf("F32"), tmp_path / "g.apr", "f32")
    original = load_file(tiny_llama / "model.safetensors")
    with AprReader(out) as r:
        assert sorted(e.name for e in r.entries) == sorted(original)
        for name, value in original.items():
            np.testing.assert_array_equal(r.load(name), value)  # Q/K un-permuted exactly


def test_metadata_is_self_contained(tiny_llama, tmp_path):
    out = convert(tiny_llama, tmp_path / "m.apr", "q4_k")
    config = json.loads((tiny_llama / "config.json").read_text())
    with AprReader(out) as r:
        meta = r.metadata
    assert meta["architecture"] == config["architectures"][0]
    assert meta["hidden_size"] == config["hidden_size"] and meta["num_layers"] == config["num_hidden_layers"]
    assert meta["num_kv_heads"] == config["num_key_value_heads"]
    assert meta["hf_config"] == config
    assert meta["tokenizer.json"] == (tiny_llama / "tokenizer.json").read_text()
    assert meta["chat_template"]
    assert meta["converter"]["name"] == "apr-qa" and meta["converter"]["version"]
    assert meta["quantization"]["quant_type"] == "q4_k" and meta["quantization"]["bits"] == 4
    by_name = {f["path"]: f["sha256"] for f in meta["provenance"]["files"]}
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert by_name[name] == sha256_file(tiny_llama / name)
    weights = load_file(tiny_llama / "model.safetensors")
    assert meta["param_count"] == sum(int(np.prod(v.shape)) for v in weights.values())


def test_conversion_is_deterministic(tiny_llama, tmp_path):
    a = convert(tiny_llama, tmp_path / "a.apr", "q4_0")
    b = convert(tiny_llama, tmp_path / "b.apr", "q4_0")
    assert sha256_file(a) == sha256_file(b)


def test_bert_buffers_are_noted_not_stored(tiny_bert, tmp_path):
    out = convert(tiny_bert, tmp_path / "bert.apr", "f16")
    with AprReader(out) as r:
        names = {e.name for e in r.entries}
        assert not any(n.endswith("position_ids") for n in names)
        assert r.metadata["architecture"].startswith("Bert")


@pytest.mark.parametrize("damage", ["truncate", "garbage-header"])
def test_corrupt_source_fails_with_one_line_and_no_output(tiny_llama, tmp_path, damage):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    st = src / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    out = tmp_path / "out.apr"
    proc = subprocess.run([sys.executable, "-m", "apr_qa.cli", "convert", str(src), str(out), "--quant", "f16"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors" in lines[0], proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.apr*"))


def test_pickle_source_is_refused_unless_opted_in(tmp_path, tiny_llama):
    import shutil

    import torch

    src = tmp_path / "pt"
    src.mkdir()
    shutil.copy(tiny_llama / "config.json", src)
    torch.save({k: torch.from_numpy(v) for k, v in load_file(tiny_llama / "model.safetensors").items()},
               src / "pytorch_model.bin")
    out = tmp_path / "pt.apr"
    proc = subprocess.run([sys.executable, "-m", "apr_qa.cli", "convert", str(src), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "pytorch_model.bin" in proc.stderr and not out.exists()
    convert(src, out, "f32", "--unsafe-allow-pickle")
    with AprReader(out) as r:
        assert r.metadata["original_format"] == "pytorch"


def test_missing_source_is_one_line_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "x.apr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert not (tmp_path / "x.apr").exists()


def test_non_finite_weights_are_refused(tiny_llama, tmp_path, capsys):
    import shutil

    from safetensors.numpy import save_file

    src = tmp_path / "nan"
    shutil.copytree(tiny_llama, src)
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, src / "model.safetensors")
    out = tmp_path / "nan.apr"
    assert main(["convert", str(src), str(out), "--quant", "q8_0"]) == 2
    err = capsys.readouterr().err
    assert "up_proj" in err and "NaN" in err and not out.exists()
