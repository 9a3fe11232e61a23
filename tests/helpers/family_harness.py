"""Checks every architecture family's tests run on its tiny models: the same proof for each family.

- `decoder_matches_transformers` / `encoder_matches_transformers`: the f32 `.apr` on our runtime
  against transformers on the original HF folder (logits / last hidden states within the oracle's
  1e-4 of the value range; identical greedy tokens; embeddings cosine >= 0.9999);
- `variants_pass_gates`: every quantized variant converts, passes every validation gate and G0,
  and loads and runs;
- `gguf_reads_back`: a GGUF written the way llama.cpp's converter writes it reads back as the same
  canonical tensors and hyperparameters as the HF folder, and runs to the same logits.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from apr_qa.arch import architecture_for
from apr_qa.certify.gateways import g0_integrity
from apr_qa.convert import convert
from apr_qa.evaluation.oracle import RELATIVE_LIMIT
from apr_qa.runtime import load_model
from apr_qa.sources import open_source
from apr_qa.validate import validate

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Numbers 3.14159, 2718 and"]
VARIANTS = ("f16", "q8_0", "q4_0", "q4_k")
MIN_EMBEDDING_COSINE = 0.9999


def relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    value_range = float(want.max() - want.min())
    return float((got.float() - want.float()).abs().max()) / (value_range or 1.0)


def decoder_matches_transformers(hf_dir: Path, tmp_path: Path, new_tokens: int = 32) -> dict:
    """f32 .apr vs transformers: per-position logits and greedy continuations. Returns the figures."""
    from transformers import AutoModelForCausalLM

    apr = tmp_path / f"{hf_dir.name}.f32.apr"
    convert(hf_dir, apr, "f32")
    ours = load_model(apr)
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    worst, same = 0.0, 0
    for text in PROMPTS:
        ids = ours.tokenizer.encode(text)
        with torch.inference_mode():
            want = reference(torch.tensor([ids])).logits[0]
            expected = reference.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                          do_sample=False, pad_token_id=ours.tokenizer.pad_id)[0, len(ids):].tolist()
        worst = max(worst, relative_diff(ours.logits([ids])[0], want))
        got = ours.generate([ids], new_tokens, stop_on_eos=False)[0].token_ids
        assert got == expected, f"{hf_dir.name}: greedy tokens differ for {text!r}:\n ours {got}\n  ref {expected}"
        same += 1
    # a batch of different lengths (left padding, masks) gives the same logits as one at a time
    batch = [ours.tokenizer.encode(t) for t in PROMPTS]
    for one, batched in zip([ours.logits([ids])[0] for ids in batch], ours.logits(batch), strict=True):
        assert relative_diff(batched, one) <= RELATIVE_LIMIT
    assert worst <= RELATIVE_LIMIT, f"{hf_dir.name}: logits differ by {worst:.3g} of their range"
    return {"max_relative_logit_diff": worst, "greedy_identical": same}


def encoder_matches_transformers(hf_dir: Path, tmp_path: Path) -> dict:
    """f32 .apr vs transformers: last hidden states and mean-pooled embeddings."""
    from transformers import AutoModel

    apr = tmp_path / f"{hf_dir.name}.f32.apr"
    convert(hf_dir, apr, "f32")
    ours = load_model(apr)
    reference = AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    worst, cosines = 0.0, []
    for text in PROMPTS:
        ids = ours.tokenizer.encode(text)
        with torch.inference_mode():
            want = reference(torch.tensor([ids])).last_hidden_state[0]
        got = ours.hidden_states([ids])[0]
        worst = max(worst, relative_diff(got, want))
        cosines.append(float(torch.nn.functional.cosine_similarity(ours.embed([text])[0].double(),
                                                                     want.mean(0).double(), dim=0)))
    assert worst <= RELATIVE_LIMIT, f"{hf_dir.name}: hidden states differ by {worst:.3g} of their range"
    assert min(cosines) >= MIN_EMBEDDING_COSINE, f"{hf_dir.name}: embedding cosine {min(cosines)}"
    return {"max_relative_hidden_diff": worst, "min_embedding_cosine": min(cosines)}


def variants_pass_gates(hf_dir: Path, tmp_path: Path, variants=VARIANTS) -> dict:
    """Each variant: converts, passes every validation gate and G0, loads and runs."""
    out = {}
    for variant in variants:
        apr = tmp_path / f"{hf_dir.name}.{variant}.apr"
        convert(hf_dir, apr, variant)
        records = validate(apr, hf_dir)
        failed = [f"{r.id}: {r.message}" for r in records if not r.passed]
        assert not failed, f"{hf_dir.name} {variant}: {failed}"
        g0 = g0_integrity(apr)
        assert g0.passed, g0.message
        model = load_model(apr)
        if model.kind == "decoder":
            assert len(model.generate([PROMPTS[0]], 4, stop_on_eos=False)[0].token_ids) == 4
        else:
            assert torch.isfinite(model.embed(PROMPTS[:1])).all()
        out[variant] = {r.id: r.measured for r in records if r.id == "C8"}
    return out


def gguf_reads_back(hf_dir: Path, gguf_path: Path, exact: bool = True, differing_ok: tuple[str, ...] = ()) -> None:
    """The GGUF presents the HF folder's canonical tensors and hyperparameters (but `differing_ok`,
    which a GGUF records in another form), and runs alike."""
    hf, gg = open_source(hf_dir), open_source(gguf_path)
    try:
        hf_tensors = {t.name: t.shape for t in hf.tensors()}
        gg_tensors = {t.name: t.shape for t in gg.tensors()}
        assert set(gg_tensors) - set(hf_tensors) <= {"lm_head.weight"}, set(gg_tensors) ^ set(hf_tensors)
        for name, shape in hf_tensors.items():
            if not hf.arch.optional(name):
                assert gg_tensors.get(name) == shape, f"{name}: GGUF {gg_tensors.get(name)} vs HF {shape}"
                a, b = hf.load(name), gg.load(name)
                if exact:
                    assert np.array_equal(a, b), name
                else:
                    assert np.allclose(a, b, atol=1e-3, rtol=1e-3), name
        mine, theirs = architecture_for(hf.config).hp, architecture_for(gg.config).hp
        differing = {f.name: (getattr(mine, f.name), getattr(theirs, f.name)) for f in fields(mine)
                     if f.name not in ("tied_embeddings", "max_positions", "sliding_windows", *differing_ok)
                     and getattr(mine, f.name) != getattr(theirs, f.name)}
        assert not differing, f"hyperparameters from the GGUF differ: {differing}"
    finally:
        hf.close()
        gg.close()
    a, b = load_model(hf_dir), load_model(gguf_path)
    ids = a.tokenizer.encode(PROMPTS[0])
    if a.kind == "decoder":
        assert b.tokenizer.encode(PROMPTS[0]) == ids
        assert relative_diff(b.logits([ids])[0], a.logits([ids])[0]) <= (RELATIVE_LIMIT if exact else 1e-2)
    else:
        limit = RELATIVE_LIMIT if exact else 1e-2
        assert relative_diff(b.hidden_states([ids])[0], a.hidden_states([ids])[0]) <= limit
