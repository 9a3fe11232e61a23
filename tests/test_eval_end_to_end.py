"""`apr-qa eval` end to end on tiny models: a model against itself must agree perfectly, and a
perturbed copy must be caught (KLD > 0, lower agreement, I-1 broken), proving the metrics can fail."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from apr_qa.cli import main
from apr_qa.errors import AprQaError
from apr_qa.evaluation import protocol
from apr_qa.evaluation.prompts import load_golden
from apr_qa.evaluation.report_json import stable_view, write_report
from apr_qa.evaluation.runner import evaluate

GOLDEN = Path(__file__).resolve().parents[1] / "config" / "prompts" / "golden-v1.yaml"
FAST = dict(runs=2, max_new_tokens=4, greedy_tokens=8)


def perturbed_copy(src: Path, dst: Path, scale: float = 0.02, seed: int = 1) -> Path:
    """The same model with Gaussian noise added to every matrix (a stand-in for a broken conversion)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    noisy = {n: t + scale * torch.randn(t.shape, generator=gen) if t.ndim == 2 else t for n, t in state.items()}
    save_file(noisy, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llama, tiny_bert):
    root = tmp_path_factory.mktemp("eval-models")
    return {"llama": tiny_llama, "llama_noisy": perturbed_copy(tiny_llama, root / "llama-noisy"),
            "bert": tiny_bert, "bert_noisy": perturbed_copy(tiny_bert, root / "bert-noisy"), "root": root}


@pytest.fixture(scope="module")
def golden():
    return load_golden(GOLDEN)


def gate(ev, gate_id):
    return next(g for g in ev.gates if g.id == gate_id)


def test_decoder_against_itself_is_identical(models, golden):
    ev = evaluate(models["llama"], models["llama"], golden, protocol.EvalOptions(**FAST))
    assert ev.protocol == "generation" and ev.sections["variant"] == "source"
    kld = ev.sections["logit_consistency"]["kl_divergence"]
    assert kld["kld"]["max"] == 0.0 and kld["same_top1"]["rate"] == 1.0
    assert kld["delta_p"]["rms"] == 0.0 and kld["perplexity"]["ratio"] == 1.0
    assert kld["positions"] == sum(r["prompt_tokens"] for r in ev.sections["runs"]["records"][:9])
    spec = ev.sections["logit_consistency"]["top_k_agreement"]
    assert spec["agreement_rate"] == 1.0 and spec["mean_agreement"] == 1.0
    assert ev.sections["invariants"]["I-1"]["identical"]
    assert ev.sections["invariants"]["I-5"]["passed"] and ev.sections["invariants"]["I-5"]["lossless"]
    runs = ev.sections["runs"]
    assert runs["total"] == 2 * len(golden.prompts) and {r["seed"] for r in runs["records"]} == {42, 43}
    assert all(r["new_tokens"] > 0 for r in runs["records"])
    for gid in ("T1", "T3", "T7", "T8", "T9", "I-1", "I-5"):
        assert gate(ev, gid).passed, gate(ev, gid)
    # decoders: the top-k agreement is recorded (above), not gated (T9 gates the logits)
    assert [g.id for g in ev.gates] == ["T1", "T2", "T3", "T4", "T6", "T7", "T8", "T9", "I-1", "I-5"]
    # the same runs with the same seeds: the paired degradation is exactly 0, its interval zero-wide
    andon = ev.sections["accuracy_andon"]
    assert andon["degradation_ci95"] == [0.0, 0.0] and andon["resolution_points"] == 0.0
    assert andon["paired_runs"] == {"pairs": 2 * len(golden.prompts), "lost": 0, "gained": 0}


def test_perturbed_decoder_is_caught(models, golden):
    ev = evaluate(models["llama_noisy"], models["llama"], golden, protocol.EvalOptions(**FAST))
    kld = ev.sections["logit_consistency"]["kl_divergence"]
    assert kld["kld"]["mean"] > 1e-4 and kld["kld"]["min"] > 0
    assert kld["delta_p"]["rms"] > 0 and kld["perplexity"]["ratio"] != 1.0
    spec = ev.sections["logit_consistency"]["top_k_agreement"]
    assert spec["mean_agreement"] < 1.0
    assert "T5" not in {g.id for g in ev.gates}  # information for decoders; T9 is the gate that catches it
    assert not gate(ev, "T9").passed and gate(ev, "T9").level == "fail"
    i1 = ev.sections["invariants"]["I-1"]
    assert not i1["identical"]
    assert any(p["first_divergence"] is not None for p in i1["per_prompt"].values())
    assert not gate(ev, "I-1").passed and gate(ev, "I-1").level == "fail"  # a source must be exact
    # the tokenizer was not touched, but the first generated token moved: I-5 gates that too
    assert ev.sections["invariants"]["I-5"]["passed"] and not gate(ev, "I-5").passed
    assert "first generated token differs" in gate(ev, "I-5").message


def test_f16_apr_against_its_source(models, golden):
    from apr_qa.convert import convert

    apr = models["root"] / "llama-f16.apr"
    convert(models["llama"], apr, "f16")
    ev = evaluate(apr, models["llama"], golden, protocol.EvalOptions(**FAST))
    assert ev.sections["variant"] == "f16" and ev.model["metadata"]["quantization"] == "f16"
    assert ev.model["format"] == "apr" and ev.reference["format"] == "safetensors"
    kld = ev.sections["logit_consistency"]["kl_divergence"]["kld"]
    assert 0 < kld["mean"] < 1e-3  # f16 rounding is visible but small
    assert gate(ev, "I-1").threshold.startswith("first greedy token")
    assert gate(ev, "I-5").passed


def test_sampled_runs_are_reproducible(models, golden):
    from apr_qa.runtime import load_model

    model = load_model(models["llama"])
    opts = protocol.EvalOptions(runs=2, max_new_tokens=5)
    first = protocol.run_generation(model, golden, opts)["records"]
    again = protocol.run_generation(model, golden, opts)["records"]
    assert first == again
    assert [r["text"] for r in first[:9]] != [r["text"] for r in first[9:]]  # seeds 42 and 43 differ


def test_encoder_against_itself_and_perturbed(models, golden):
    same = evaluate(models["bert"], models["bert"], golden, protocol.EvalOptions(runs=2))
    assert same.protocol == "embedding"
    ec = same.sections["embedding_consistency"]
    assert ec["max_abs_diff"] == 0.0 and ec["cosine_min"] == pytest.approx(1.0)
    assert gate(same, "I-1").passed and gate(same, "T5").passed and gate(same, "I-5").passed
    sim = same.sections["similarity"]
    assert sim["margin"] is not None and set(sim["paraphrase"]) == {p.id for p in golden.paraphrase_pairs}
    assert all(s["tokens"] > s["max_positions"] for s in ec["skipped_texts"])

    noisy = evaluate(models["bert_noisy"], models["bert"], golden, protocol.EvalOptions(runs=2))
    ec = noisy.sections["embedding_consistency"]
    assert ec["max_abs_diff"] > 0 and ec["cosine_min"] < 0.99999
    assert not gate(noisy, "I-1").passed and not gate(noisy, "T5").passed


def test_cli_writes_json_and_exit_code_follows_gates(models, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", str(models["llama"]), "--reference", str(models["llama"]), "--prompts", str(GOLDEN),
               "--runs", "2", "--max-new-tokens", "4", "--greedy-tokens", "4", "--json", str(out)])
    report = json.loads(out.read_text())
    failed = [g for g in report["gates"] if not g["passed"] and g["level"] == "fail"]
    assert rc == (1 if failed else 0) == report["verdict"]["exit_code"]
    assert report["prompts"]["sha256"] == load_golden(GOLDEN).sha256
    assert report["protocol"] == "generation" and report["sampling"]["seeds"] == [42, 43]
    assert report["model"]["sha256"] == report["reference"]["sha256"]
    assert report["accuracy"]["overall"]["n"] == 18 and len(report["accuracy"]["overall"]["ci95"]) == 2
    assert report["latency"]["n"] == 18 and report["memory"]["peak_bytes"] > 0
    assert report["logit_consistency"]["kl_divergence"]["kld"]["mean"] == 0.0
    assert "gates:" in capsys.readouterr().err
    # the stable view ignores clocks and timings, nothing else
    stable = stable_view(report)
    assert "latency" not in stable and "started" not in stable and "measured" not in stable["gates"][1]
    assert stable["accuracy"] == report["accuracy"]


def test_cli_bad_prompt_file_writes_nothing(models, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata: {version: '1'}\nprompts:\n  - {id: x, input: y, category: sanity}\n")
    out = tmp_path / "eval.json"
    rc = main(["eval", str(models["llama"]), "--reference", str(models["llama"]), "--prompts", str(bad),
               "--json", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "expected_pattern" in err


def test_report_is_written_atomically_and_rejects_nan(tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(AprQaError, match="not written"):
        write_report(out, {"x": float("nan")})
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.real_model
def test_minilm_f16_against_its_source(minilm_dir, golden, tmp_path):
    from apr_qa.convert import convert

    apr = tmp_path / "minilm-f16.apr"
    convert(minilm_dir, apr, "f16")
    ev = evaluate(apr, minilm_dir, golden, protocol.EvalOptions(runs=1))
    ec, sim = ev.sections["embedding_consistency"], ev.sections["similarity"]
    assert ec["skipped_texts"] == [] and ec["cosine_min"] > 0.9999 and ec["max_abs_diff"] > 0
    assert sim["passed"] and sim["margin"] > 0.3 and sim["reference"]["passed"]
    assert all(g.passed for g in ev.gates), [g for g in ev.gates if not g.passed]


def test_nan_weights_fail_gate_t1(models, golden, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(models["llama"], tmp_path / "llama-nan")
    state = load_file(broken / "model.safetensors")
    state["model.norm.weight"][0] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    ev = evaluate(broken, models["llama"], golden, protocol.EvalOptions(**FAST))
    t1 = gate(ev, "T1")
    assert not t1.passed and t1.level == "fail" and t1.message
    assert [g.id for g in ev.gates] == ["T1", "T3"] and "logit_consistency" not in ev.sections
