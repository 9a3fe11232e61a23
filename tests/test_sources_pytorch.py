"""PyTorch pickles: refused by default, loaded with weights_only=True when allowed, and a pickle
that would run code is refused even then."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from apr_qa.dtypes import DType
from apr_qa.errors import FormatError, SecurityError
from apr_qa.sources import detect_format, open_source


@pytest.fixture()
def pickle_dir(tiny_llama_bf16, tmp_path):
    """The tiny BF16 llama re-saved as pytorch_model.bin (config and tokenizer alongside)."""
    d = tmp_path / "pt"
    d.mkdir()
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(tiny_llama_bf16 / name, d / name)
    torch.save(load_file(tiny_llama_bf16 / "model.safetensors"), d / "pytorch_model.bin")
    return d


def test_refused_without_permission(pickle_dir):
    assert detect_format(pickle_dir) == "pytorch"
    assert detect_format(pickle_dir / "pytorch_model.bin") == "pytorch"
    with pytest.raises(SecurityError) as e:
        open_source(pickle_dir)
    assert str(e.value).startswith(f"{pickle_dir / 'pytorch_model.bin'}:") and "\n" not in str(e.value)


def test_loaded_with_permission(pickle_dir, tiny_llama_bf16):
    ref = load_file(tiny_llama_bf16 / "model.safetensors")
    src = open_source(pickle_dir, allow_pickle=True)
    assert src.format == "pytorch" and src.config["model_type"] == "llama" and src.tokenizer_json
    assert {t.name for t in src.tensors()} == set(ref)
    for name, t in ref.items():
        assert np.array_equal(src.load(name), t.float().numpy()), name
    raw = src.load_raw("model.norm.weight")
    assert raw.dtype is DType.BF16
    assert np.array_equal(raw.data, ref["model.norm.weight"].view(torch.int16).numpy().view(np.uint16))
    assert pickle_dir / "pytorch_model.bin" in src.files


def test_single_pt_file(pickle_dir):
    f = pickle_dir / "weights.pt"
    (pickle_dir / "pytorch_model.bin").rename(f)
    src = open_source(f, allow_pickle=True)
    assert len(src.tensors()) > 0


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("via_torch_save", [True, False])
def test_code_executing_pickle_refused_even_when_allowed(tmp_path, via_torch_save):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text("{}")
    marker = tmp_path / "pwned"
    payload = {"w": torch.zeros(2), "x": _RunsCode(marker)}
    f = d / "pytorch_model.bin"
    if via_torch_save:
        torch.save(payload, f)
    else:
        f.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(SecurityError) as e:
        open_source(d, allow_pickle=True)
    assert str(e.value).startswith(f"{f}:") and "weights_only" in str(e.value)
    assert not marker.exists()
    # the payload is live: an unrestricted load does run it
    torch.load(f, weights_only=False) if via_torch_save else pickle.loads(f.read_bytes())
    assert marker.exists()


def test_corrupt_pickle(pickle_dir):
    f = pickle_dir / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(FormatError) as e:
        open_source(pickle_dir, allow_pickle=True)
    assert str(e.value).startswith(f"{f}:") and "\n" not in str(e.value)
