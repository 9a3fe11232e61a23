"""Our runtime on the real models against transformers: SmolLM2-135M read from its original GGUF
(both sides dequantize the Q4_1 file independently) and all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch

from apr_qa.runtime import load_model
from test_runtime_decoder import assert_logits_close
from test_runtime_encoder import check_against_transformers

pytestmark = pytest.mark.real_model

PROMPTS = ["The capital of France is", "def add(a: int, b: int) -> int:\n    \"\"\"Return the sum of a and b.\"\"\"\n"]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_model(smollm2_gguf)


def test_smollm2_logits_match_transformers_gguf_loader(smollm2, smollm2_gguf):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                     dtype=torch.float32).eval()
    batch = [smollm2.tokenizer.encode(p) for p in PROMPTS]
    with torch.no_grad():
        want = [reference(torch.tensor([seq])).logits[0] for seq in batch]
    assert_logits_close(smollm2.logits(batch), want)


def test_smollm2_greedy_knows_paris(smollm2):
    out = smollm2.generate(["The capital of France is"], max_new_tokens=8)[0]
    assert "Paris" in out.text


def test_smollm2_chat_template_prompt_generates(smollm2):
    prompt = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    out = smollm2.generate([prompt], max_new_tokens=16)[0]
    assert "Paris" in out.text


def test_minilm_matches_transformers(minilm_dir):
    check_against_transformers(minilm_dir)
