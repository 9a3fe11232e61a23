"""Static-shape decode steps (runtime.static_decode): the step CUDA graphs capture, run eagerly on
CPU against the ordinary decode loop, over the decoder forms whose masks differ (grouped-query
rotary, sliding window, ALiBi, learned positions) and a padded batch; the graph replay on CUDA."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_llama, once

from apr_qa.runtime import load_model

PROMPTS = ["hello world, hello", "the quick brown fox jumps over"]  # different lengths: left padding


def families(tiny_dir):
    import tiny_falcon
    import tiny_gpt2

    return {
        "llama": lambda: once(tiny_dir / "llama_static", make_tiny_llama),
        "mistral_window": lambda: once(tiny_dir / "mistral_window", lambda p: make_tiny_llama(
            p, model_type="mistral", sliding_window=4)),
        "falcon_alibi": lambda: once(tiny_dir / "falcon_alibi_static",
                                     lambda p: tiny_falcon.make_tiny_falcon(p, "alibi")),
        "gpt2": lambda: once(tiny_dir / "gpt2_static", tiny_gpt2.make_tiny_gpt2),
    }


@pytest.mark.parametrize("family", ["llama", "mistral_window", "falcon_alibi", "gpt2"])
def test_static_steps_match_the_decode_loop(family, tiny_dir):
    model = load_model(families(tiny_dir)[family]())
    eager = model.generate(PROMPTS, 10, stop_on_eos=False, static_steps=False)
    static = model.generate(PROMPTS, 10, stop_on_eos=False, static_steps=True)
    assert [g.token_ids for g in static] == [g.token_ids for g in eager]


def test_static_steps_with_packed_weights(tiny_llama, tmp_path):
    from apr_qa.convert import convert

    path = convert(tiny_llama, tmp_path / "tiny.q4_0.apr", "q4_0").output
    model = load_model(path)
    assert model.generate(PROMPTS, 8, stop_on_eos=False, static_steps=True)[1].token_ids == \
        model.generate(PROMPTS, 8, stop_on_eos=False, static_steps=False)[1].token_ids


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA graph decoding is unmeasured here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_matches_eager(dtype, tiny_llama):
    model = load_model(tiny_llama, device="cuda", dtype=dtype)
    graphed = model.generate(PROMPTS, 12, stop_on_eos=False)  # CUDA: static steps, one graph replay each
    eager = model.generate(PROMPTS, 12, stop_on_eos=False, static_steps=False)
    assert [g.token_ids for g in graphed] == [g.token_ids for g in eager]
