"""Our decoder runtime against transformers (the independent oracle) on tiny llama-family models,
plus the generation machinery: KV cache, left padding, sampling, stopping."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tiny_models
from apr_qa.errors import UnsupportedError
from apr_qa.runtime import load_model

BATCH = [[5, 17, 42, 99, 7, 3, 250, 11, 64], [8, 300], [120] * 14]  # ragged: exercises padding


def assert_logits_close(ours: list[torch.Tensor], reference: list[torch.Tensor], rel: float = 1e-4):
    assert len(ours) == len(reference)
    for got, want in zip(ours, reference, strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32
        spread = (want.max() - want.min()).item()
        assert (got - want).abs().max().item() <= rel * spread


def reference_logits(folder, batch, cls_name="AutoModelForCausalLM"):
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([seq])).logits[0] for seq in batch]


def variant(base, folder, config_cls: str, model_cls: str, **overrides):
    """A tiny model saved by transformers itself (new-style config: rope_parameters), every tensor
    (biases included) drawn from a seeded generator, with the base folder's tokenizer."""
    import transformers

    config = json.loads((base / "config.json").read_text())
    config.pop("architectures"), config.pop("model_type")
    config.update(overrides)
    torch.manual_seed(1)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.08 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def variants(tiny_llama, tiny_llama_tied, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime_variants")
    mha = tiny_models.make_tiny_llama(root / "mha_tied", num_kv_heads=4, tie_embeddings=True)
    # old spelling (rope_theta + rope_scaling) written into config.json by hand
    linear = tiny_models.make_tiny_llama(root / "rope_linear")
    cfg = json.loads((linear / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}
    (linear / "config.json").write_text(json.dumps(cfg))
    return {
        "gqa_untied": tiny_llama,
        "gqa_tied": tiny_llama_tied,
        "mha_tied": mha,
        "rope_linear": linear,
        "rope_llama3": variant(tiny_llama, root / "rope_llama3", "LlamaConfig", "LlamaForCausalLM",
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
        "llama_biases": variant(tiny_llama, root / "llama_biases", "LlamaConfig", "LlamaForCausalLM",
                                attention_bias=True, mlp_bias=True, head_dim=32),
        "qwen2_bias": variant(tiny_llama, root / "qwen2", "Qwen2Config", "Qwen2ForCausalLM", rope_theta=1e6),
        "mistral": variant(tiny_llama, root / "mistral", "MistralConfig", "MistralForCausalLM", sliding_window=6),
    }


@pytest.mark.parametrize("name", ["gqa_untied", "gqa_tied", "mha_tied", "rope_linear", "rope_llama3",
                                  "llama_biases", "qwen2_bias", "mistral"])
def test_logits_match_transformers(variants, name):
    folder = variants[name]
    model = load_model(folder)
    assert model.kind == "decoder" and model.dtype == torch.float32 and model.device.type == "cpu"
    assert_logits_close(model.logits(BATCH), reference_logits(folder, BATCH))


def test_variants_really_differ(variants):
    """The oracle comparisons above would be hollow if the variants computed the same thing."""
    base = load_model(variants["gqa_untied"]).logits(BATCH[:1])[0]
    linear = load_model(variants["rope_linear"]).logits(BATCH[:1])[0]
    assert (base - linear).abs().max() > 1e-3


@pytest.fixture(scope="module")
def model(tiny_llama):
    return load_model(tiny_llama)


def test_kv_cache_generation_equals_no_cache_argmax_loop(model):
    prompt = model.tokenizer.encode("The capital of France is")
    generated = model.generate([prompt], max_new_tokens=12, stop_on_eos=False)[0]
    seq = list(prompt)
    for _ in range(12):
        seq.append(int(model.logits([seq])[0][-1].argmax()))
    assert generated.token_ids == seq[len(prompt):]
    assert generated.finish_reason == "length" and len(generated.token_ids) == 12
    assert generated.text == model.tokenizer.decode(generated.token_ids)


def test_batched_generation_with_left_padding_equals_one_by_one(model):
    prompts = ["def add(a, b):", "The quick brown fox jumps over the lazy dog. A journey", "Water"]
    batched = model.generate(prompts, max_new_tokens=10, stop_on_eos=False)
    for prompt, got in zip(prompts, batched, strict=True):
        alone = model.generate([prompt], max_new_tokens=10, stop_on_eos=False)[0]
        assert got.prompt_ids == alone.prompt_ids
        assert got.token_ids == alone.token_ids


def test_batched_logits_equal_single(model):
    together = model.logits(BATCH)
    for seq, got in zip(BATCH, together, strict=True):
        assert torch.allclose(got, model.logits([seq])[0], atol=1e-5, rtol=0)


def test_generation_stops_at_eos_per_row(model):
    prompts = ["The capital of France is", "for i in range(10):"]
    free = model.generate(prompts, max_new_tokens=6, stop_on_eos=False)
    stopper = free[0].token_ids[2]  # declare the first row's third token an end-of-sequence id
    model.tokenizer.eos_ids.add(stopper)
    try:
        out = model.generate(prompts, max_new_tokens=6)
    finally:
        model.tokenizer.eos_ids.discard(stopper)
    first = free[0].token_ids.index(stopper)
    assert out[0].token_ids == free[0].token_ids[: first + 1] and out[0].finish_reason == "eos"
    if stopper not in free[1].token_ids:
        assert out[1].token_ids == free[1].token_ids and out[1].finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    def sample(seed):
        return model.generate(["Numbers such as"], max_new_tokens=16, temperature=1.5, seed=seed,
                              stop_on_eos=False)[0].token_ids

    assert sample(7) == sample(7)
    assert len({tuple(sample(s)) for s in range(4)}) > 1


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    greedy = model.generate(["Tokenizers split text"], max_new_tokens=8, stop_on_eos=False)[0].token_ids
    for options in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = model.generate(["Tokenizers split text"], max_new_tokens=8, temperature=1.0, seed=3,
                                 stop_on_eos=False, **options)[0]
        assert sampled.token_ids == greedy


def test_timeout_ends_generation(model):
    out = model.generate(["The capital"], max_new_tokens=50, timeout_s=0.0, stop_on_eos=False)[0]
    assert out.finish_reason == "timeout" and len(out.token_ids) == 1
    assert out.total_time_s >= out.time_to_first_token_s > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_float32(model, tiny_llama, dtype):
    half = load_model(tiny_llama, dtype=dtype)
    assert half.dtype == dtype
    full, low = model.logits(BATCH), half.logits(BATCH)
    assert_logits_close(low, full, rel=3e-2)
    prompt = "The capital of France is"
    assert len(half.generate([prompt], max_new_tokens=4)[0].token_ids) >= 1


def test_gguf_and_apr_sources_give_the_same_logits(model, tiny_llama, tiny_gguf, tmp_path):
    from apr_qa.convert import convert

    want = model.logits(BATCH)
    assert_logits_close(load_model(tiny_gguf("F32")).logits(BATCH), want, rel=1e-6)
    apr = tmp_path / "tiny-f32.apr"
    convert(tiny_llama, apr, "f32")
    assert_logits_close(load_model(apr).logits(BATCH), want, rel=1e-6)
    q8 = tmp_path / "tiny-q8_0.apr"
    convert(tiny_llama, q8, "q8_0")
    quantized = load_model(q8).logits(BATCH)
    assert_logits_close(quantized, want, rel=5e-2)
    assert not all(torch.equal(a, b) for a, b in zip(quantized, want, strict=True))  # really the quantized weights


def test_unknown_architecture_is_named(tiny_llama, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_llama, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPTJForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="GPTJForCausalLM"):
        load_model(folder)


def test_cuda_request_without_gpu_fails_clearly(tiny_llama):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UnsupportedError, match=r"CUDA requested but torch.cuda.is_available\(\) is False"):
        load_model(tiny_llama, device="cuda")


def test_tokenizer_and_chat_template_match_transformers(model, tiny_llama):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_llama)
    text = "Café naïve 3.14159 🙂 <|im_start|>user"
    assert model.tokenizer.encode(text) == reference.encode(text)
    ids = reference.encode(text)
    assert model.tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    messages = [{"role": "user", "content": "What is two plus two?"},
                {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And 3+3?"}]
    for add in (True, False):
        assert model.tokenizer.apply_chat_template(messages, add_generation_prompt=add) == \
            reference.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
    assert model.tokenizer.eos_ids == {reference.convert_tokens_to_ids("<|im_end|>")}
