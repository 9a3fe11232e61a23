"""The golden reference (apr-qa golden-reference): the source's runs, greedy generations and top-k
log-probs computed once per model; an evaluation read from the file must equal one that builds it in
memory, and a file made for other prompts, options or another kind of model is refused in one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from apr_qa.cli import main
from apr_qa.errors import AprQaError, FormatError
from apr_qa.evaluation import golden_reference, protocol
from apr_qa.evaluation.prompts import load_golden
from apr_qa.evaluation.report_json import stable_view
from apr_qa.evaluation.runner import evaluate

GOLDEN = Path(__file__).resolve().parents[1] / "config" / "prompts" / "golden-v1.yaml"
FAST = ["--runs", "2", "--max-new-tokens", "4", "--greedy-tokens", "8"]
OPTS = protocol.EvalOptions(runs=2, max_new_tokens=4, greedy_tokens=8)


@pytest.fixture(scope="module")
def golden():
    return load_golden(GOLDEN)


@pytest.fixture(scope="module")
def llama_reference(tmp_path_factory, tiny_llama) -> Path:
    out = tmp_path_factory.mktemp("golden") / "llama.npz"
    assert main(["golden-reference", str(tiny_llama), "--prompts", str(GOLDEN), *FAST, "--out", str(out)]) == 0
    return out


def _comparable(ev) -> dict:
    """The comparisons (not the timings, which differ run to run)."""
    keep = ("logit_consistency", "accuracy_andon", "invariants")
    return {k: stable_view(ev.sections[k]) for k in keep} | {"gates": [(g.id, g.passed) for g in ev.gates]}


def test_file_round_trip(llama_reference, golden):
    ref = golden_reference.read(llama_reference)
    assert ref.kind == "decoder" and ref.meta["prompts_sha256"] == golden.sha256
    assert ref.meta["options"]["runs"] == 2 and len(ref.runs["records"]) == 2 * len(golden.prompts)
    assert [len(a) for a in ref.topk_ids] == [len(t) for t in ref.token_ids]
    assert [len(a) for a in ref.next_logp] == [len(t) - 1 for t in ref.token_ids]
    assert all(a.shape[1] == min(golden_reference.TOP_K, 256) or a.shape[1] < 256 for a in ref.topk_ids)
    assert len(ref.greedy) == len(golden.prompts) and len(ref.greedy_runs) == len(golden.prompts)


def test_evaluation_from_the_file_equals_one_built_in_memory(llama_reference, golden, tiny_llama):
    from_file = evaluate(tiny_llama, llama_reference, golden, OPTS)
    in_memory = evaluate(tiny_llama, tiny_llama, golden, OPTS)
    assert _comparable(from_file) == _comparable(in_memory)
    kld = from_file.sections["logit_consistency"]["kl_divergence"]
    assert kld["kld"]["max"] == 0.0 and kld["same_top1"]["rate"] == 1.0  # the source against itself
    assert from_file.reference["golden_reference"] == str(llama_reference)


def test_a_greedy_stack_pairs_with_the_greedy_generations(llama_reference, golden, tiny_llama):
    greedy = dataclasses.replace(OPTS, temperature=0.0, top_k=0, top_p=1.0)
    ev = evaluate(tiny_llama, llama_reference, golden, greedy)
    assert ev.sections["accuracy_andon"]["degradation_ci95"] == [0.0, 0.0]


@pytest.mark.parametrize("change, words", [
    (dict(runs=3), "runs=2 (asked 3)"),
    (dict(seed=7), "seed=42 (asked 7)"),
    (dict(max_new_tokens=6), "max_new_tokens=4 (asked 6)"),
])
def test_other_run_options_are_refused(llama_reference, golden, tiny_llama, change, words):
    with pytest.raises(AprQaError, match="other run options") as exc:
        evaluate(tiny_llama, llama_reference, golden, dataclasses.replace(OPTS, **change))
    assert words in str(exc.value) and str(llama_reference) in str(exc.value) and "\n" not in str(exc.value)


def test_other_prompts_are_refused(llama_reference, tiny_llama, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(GOLDEN.read_text() + "\n# edited\n")
    with pytest.raises(AprQaError, match="made for other prompts"):
        evaluate(tiny_llama, llama_reference, load_golden(other), OPTS)


def test_an_encoder_reference_is_refused_for_a_decoder(tmp_path, golden, tiny_llama, tiny_bert):
    out = tmp_path / "bert.npz"
    assert main(["golden-reference", str(tiny_bert), "--prompts", str(GOLDEN), *FAST, "--out", str(out)]) == 0
    ref = golden_reference.read(out)
    assert ref.kind == "encoder" and ref.embeddings  # every golden and pair text within the context
    with pytest.raises(AprQaError, match="an encoder's; the model is a decoder"):
        evaluate(tiny_llama, out, golden, OPTS)
    bert = evaluate(tiny_bert, out, golden, OPTS)
    assert bert.sections["embedding_consistency"]["max_abs_diff"] == 0.0


def test_not_a_reference_file(tmp_path, tiny_llama, golden):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="not a golden reference file"):
        evaluate(tiny_llama, bad, golden, OPTS)
    code = main(["eval", str(tiny_llama), "--reference", str(bad), "--prompts", str(GOLDEN), *FAST,
                 "--json", str(tmp_path / "eval.json")])
    assert code == 2 and not (tmp_path / "eval.json").exists()


def test_the_cli_reads_the_file(llama_reference, tiny_llama, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", str(tiny_llama), "--reference", str(llama_reference), "--prompts", str(GOLDEN), *FAST,
                 "--json", str(out)])
    assert code == 1  # random tiny weights answer no sanity prompt: T4, a gate, not an error
    report = json.loads(out.read_text())
    assert report["reference"]["golden_reference"] == str(llama_reference)
