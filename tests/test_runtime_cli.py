"""`apr-qa run` and `apr-qa chat` as a user calls them (a real subprocess, stdin a pipe)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from apr_qa.runtime import load_model


def apr_qa(*args, stdin: str | None = None):
    # passive OpenMP waits: spinning threads crawl when other jobs share the cores
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "apr_qa.cli", *map(str, args)], input=stdin, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def model(tiny_llama):
    return load_model(tiny_llama)


def test_run_prints_only_the_generated_text(tiny_llama, model):
    done = apr_qa("run", tiny_llama, "The capital of France is", "--max-new-tokens", 6, "--threads", 1)
    assert done.returncode == 0, done.stderr
    expected = model.generate(["The capital of France is"], max_new_tokens=6)[0].text
    assert done.stdout == expected + "\n"


def test_run_chat_and_seeded_sampling(tiny_llama, model):
    args = ["run", tiny_llama, "What is two plus two?", "--chat", "--max-new-tokens", 5, "--temperature", 0.9,
            "--seed", 11, "--threads", 1]
    first, second = apr_qa(*args), apr_qa(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "What is two plus two?"}])
    expected = model.generate([prompt], 5, temperature=0.9, seed=11)[0].text
    assert first.stdout == expected + "\n"


def test_chat_reads_turns_from_a_pipe(tiny_llama, model):
    done = apr_qa("chat", tiny_llama, "--max-new-tokens", 4, "--threads", 1, stdin="Hello\n\nWhat is two plus two?\n")
    assert done.returncode == 0, done.stderr
    # the second reply is generated with the first turn in context
    messages = [{"role": "user", "content": "Hello"}]
    first = model.generate([model.tokenizer.apply_chat_template(messages)], 4)[0].text.strip()
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "What is two plus two?"}]
    second = model.generate([model.tokenizer.apply_chat_template(messages)], 4)[0].text.strip()
    assert done.stdout == f"{first}\n{second}\n"


def test_run_on_an_encoder_prints_the_embedding(tiny_bert):
    done = apr_qa("run", tiny_bert, "Water boils", "--threads", 1)
    assert done.returncode == 0, done.stderr
    norm = load_model(tiny_bert).embed(["Water boils"])[0].norm().item()
    assert done.stdout.startswith("encoder embedding (mean pooled): dim 64, L2 norm")
    assert f"{norm:.6f}" in done.stdout


def test_chat_refuses_an_encoder(tiny_bert):
    done = apr_qa("chat", tiny_bert, stdin="hi\n")
    assert done.returncode == 2 and "decoder" in done.stderr and done.stdout == ""


def test_cuda_without_gpu_is_one_clear_line(tiny_llama):
    done = apr_qa("run", tiny_llama, "hi", "--device", "cuda")
    if done.returncode == 0:
        pytest.skip("a GPU is present")
    assert done.returncode == 2
    assert done.stderr.strip() == "apr-qa: error: CUDA requested but torch.cuda.is_available() is False"


def test_missing_model_is_one_clear_line(tmp_path):
    done = apr_qa("run", tmp_path / "nope", "hi")
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
