"""Shared fixtures: tiny deterministic models (built once per session) and the real models."""

from __future__ import annotations

import os
import sys

# Before torch loads: OpenMP's default spin-waiting makes 2-thread torch ~10x slower on a shared
# 2-core machine (measured 0.42 vs 5 tok/s decode).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # tests import tiny_models etc. directly

import tiny_models  # noqa: E402

from real_models import MINILM_DIR, SMOLLM2_DERIVED, SMOLLM2_GGUF, require  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return require(SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return require(MINILM_DIR / "model.safetensors").parent


@pytest.fixture(scope="session")
def smollm2_derived() -> Path:
    return require(SMOLLM2_DERIVED / "model.safetensors").parent


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Session-wide folder for tiny models; each helper below builds its model once."""
    return tmp_path_factory.mktemp("tiny")


_once = tiny_models.once


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir) -> Path:
    """GQA (4 heads / 2 KV heads), untied, float32, one file."""
    return _once(tiny_dir / "llama", tiny_models.make_tiny_llama)


@pytest.fixture(scope="session")
def tiny_llama_sharded(tiny_dir) -> Path:
    return _once(tiny_dir / "llama_sharded", lambda p: tiny_models.make_tiny_llama(p, shards=3))


@pytest.fixture(scope="session")
def tiny_llama_bf16(tiny_dir) -> Path:
    import torch

    return _once(tiny_dir / "llama_bf16", lambda p: tiny_models.make_tiny_llama(p, dtype=torch.bfloat16))


@pytest.fixture(scope="session")
def tiny_llama_tied(tiny_dir) -> Path:
    return _once(tiny_dir / "llama_tied", lambda p: tiny_models.make_tiny_llama(p, tie_embeddings=True))


@pytest.fixture(scope="session")
def tiny_bert(tiny_dir) -> Path:
    return _once(tiny_dir / "bert", tiny_models.make_tiny_bert)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir, tiny_llama):
    """Factory: tiny_gguf(qtype="F32") -> path of the tiny llama converted to a GGUF of that type."""

    def make(qtype: str = "F32") -> Path:
        return _once(tiny_dir / f"llama_{qtype}.gguf", lambda p: tiny_models.make_tiny_gguf(tiny_llama, p, qtype=qtype))

    return make


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python, the llama.cpp cross-checks' peer (make setup builds it where it can)."""
    try:
        import llama_cpp
    except ImportError as exc:
        pytest.skip(f"llama-cpp-python is not importable ({exc}): the llama.cpp checks did not run "
                    "(recorded golden bytes are still checked)")
    return llama_cpp
