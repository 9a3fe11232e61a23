"""Stacks certified in their own right (`apr-qa certify --stack`, docs/stacks.md "Certifying a stack").

On a tiny llama: the contract's reference implementation (our runtime behind the command contract)
and a stack that runs other weights, each evaluated for real and then certified with the same
playbook. The scenarios pass on both (edge inputs), but the second stack's own evaluation failed T9,
so its certification is BLOCKED through G4 with T9's Five Whys, while the first is CERTIFIED. An
evaluation of another stack is refused as evidence; an encoder is NOT_APPLICABLE on a decoder-only
stack. After a failed run, only the artifact's own gates (download, conversion, validation) block
another stack's certification. On SmolLM2 (real weights), llama.cpp gets a verdict of its own: its
scenarios, run through the llamacpp adapter (run and multi-turn chat; serve is apr-qa's server and is
skipped), pass the gateways.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

import stack_reference
import tiny_models
from apr_qa.certify.registry import COLUMNS, LEGACY_COLUMNS, export_csv, read_csv
from apr_qa.cli import main
from apr_qa.convert import convert

PROMPTS = """\
metadata: {version: "stacks-certify-1"}
prompts:
  - {id: any, input: "hello world", expected_pattern: "(?s).*", category: sanity}
  - {id: capital, input: "The capital of France is", expected_pattern: "(?s).*", category: sanity}
"""
# edge inputs only: a tiny random model's answers are garbage (G4), edge inputs are judged on surviving
EDGE_PLAYBOOK = {"extends": "smoke", "name": "stacks-edge", "failure_policy": "collect-all",
                 "categories": ["EDGE", "PERF"], "test_matrix": {"max_new_tokens": 4},
                 "prompts": [{"id": "edge-unicode", "input": "ünïcödé 🙂 →", "category": "EDGE"},
                             {"id": "edge-empty", "input": "", "category": "EDGE"}]}
FAST = ["--runs", "1", "--max-new-tokens", "4", "--greedy-tokens", "8", "--threads", "2"]


def command_stack(name: str, *extra: str) -> str:
    return json.dumps({"name": name, "kind": "command",
                       "argv": [sys.executable, str(Path(stack_reference.__file__)), *extra]})


@pytest.fixture(scope="module")
def tiny(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stacks-certify")
    convert(tiny_llama, d / "llama.q8_0.apr", "q8_0")
    other = tiny_models.make_tiny_llama(d / "other", seed=1)  # the same architecture, other weights
    convert(other, d / "other.q8_0.apr", "q8_0")
    (d / "prompts.yaml").write_text(PROMPTS)
    (d / "playbook.yaml").write_text(yaml.safe_dump(EDGE_PLAYBOOK))
    return {"dir": d, "apr": d / "llama.q8_0.apr", "other": d / "other.q8_0.apr", "source": tiny_llama}


def evaluate(tiny: dict[str, Path], stack: str, name: str) -> tuple[int, Path]:
    out = tiny["dir"] / f"eval-{name}.json"
    rc = main(["eval", str(tiny["apr"]), "--reference", str(tiny["source"]), "--prompts",
               str(tiny["dir"] / "prompts.yaml"), *FAST, "--stack", stack, "--json", str(out)])
    return rc, out


def certify(tiny: dict[str, Path], stack: str, name: str, *evidence: Path, playbook: Path | None = None,
            variant: Path | None = None) -> tuple[int, Path]:
    out = tiny["dir"] / "certify" / f"{name}.json"
    args = ["certify", "--model-id", "test/tiny-llama", "--playbook", str(playbook or tiny["dir"] / "playbook.yaml"),
            "--variant", f"q8_0={variant or tiny['apr']}", "--stack", stack, "--output", str(out)]
    for e in evidence:
        args += ["--evidence", str(e)]
    return main(args), out


@pytest.fixture(scope="module")
def certified(tiny) -> dict[str, tuple[int, dict]]:
    """The reference implementation (sound) and a stack that loads other weights, each evaluated, then
    certified from its own evaluation."""
    out = {}
    for name, stack in (("ref", command_stack("ref")), ("wrong", command_stack("wrong", "--model-override",
                                                                                 str(tiny["other"])))):
        rc, evaluation = evaluate(tiny, stack, name)
        assert rc == (0 if name == "ref" else 1)  # other weights: T9 (logits vs the reference) fails
        rc, cert = certify(tiny, stack, name, evaluation)
        out[name] = (rc, json.loads(cert.read_text()))
    return out


def test_a_sound_stack_is_certified_from_its_own_evidence(certified, tiny):
    rc, cert = certified["ref"]
    assert rc == 0 and cert["mqs"]["status"] == "CERTIFIED" and cert["tier_passed"]
    assert cert["certified_stack"]["name"] == "ref" and cert["certified_stack"]["kind"] == "command"
    assert cert["certified_stack"]["fingerprint"].startswith("ref:")
    scenarios = [g for g in cert["gates"] if "scenario" in g["details"]]
    assert len(scenarios) == 2 and all(g["details"]["outcome"] == "pass" for g in scenarios)
    evaluation = [g for g in cert["gates"] if g["details"].get("evidence_file") == str(tiny["dir"] / "eval-ref.json")]
    assert {"T1", "T9", "I-5"} <= {g["id"] for g in evaluation}
    assert all(g["details"]["variant"] == "q8_0" and g["details"]["evidence_stage"] == "evaluate" for g in evaluation)


def test_a_stack_whose_evaluation_failed_a_gate_is_blocked(certified, tiny):
    """Its scenarios pass (G1-G3 hold), but its own evaluation tripped T9: that fails G4, as a variant
    the workflow's gates blocked, and the certification is BLOCKED with T9's chain."""
    rc, cert = certified["wrong"]
    assert rc == 1 and cert["mqs"]["status"] == "BLOCKED" and cert["mqs"]["raw"] == 0
    gateways = {g["id"]: g for g in cert["mqs"]["gateways"]}
    assert all(gateways[g]["passed"] for g in ("G0", "G1", "G2", "G3")) and not gateways["G4"]["passed"]
    assert "q8_0: T9" in gateways["G4"]["reason"]
    scenarios = [g for g in cert["gates"] if "scenario" in g["details"]]
    assert scenarios and all(g["details"]["outcome"] == "pass" for g in scenarios)
    g4 = next(g for g in cert["gates"] if g["id"] == "G4" and g["details"].get("gate") == "T9")
    assert g4["details"]["evidence_file"] == str(tiny["dir"] / "eval-wrong.json")
    whys = g4["details"]["five_whys"]["whys"]
    assert whys[0].startswith("G4 (output is not garbage) failed: q8_0: T9") and whys[1].startswith("T9 ")


def test_another_stacks_evaluation_is_refused(tiny, capsys):
    """An evaluation is evidence for the stack it ran on only: one line, exit 2, nothing written."""
    rc, out = certify(tiny, "builtin", "mixed", tiny["dir"] / "eval-ref.json")
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "eval-ref.json: an evaluation on stack 'ref': the certification of stack 'builtin' takes its own" in err


def test_an_encoder_is_not_applicable_on_a_decoder_only_stack(tiny, tiny_bert, tmp_path, capsys):
    apr = tmp_path / "bert.f32.apr"
    convert(tiny_bert, apr, "f32")
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(yaml.safe_dump({**EDGE_PLAYBOOK, "variants": {"formats": ["apr"], "quantizations": ["f32"]}}))
    out = tmp_path / "bert-ref.json"
    rc = main(["certify", "--model-id", "test/tiny-bert", "--playbook", str(playbook), "--variant", f"f32={apr}",
               "--stack", command_stack("ref"), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "not certified on stack ref: " in err and "evaluates decoders (text generation) only" in err
    cert = json.loads(out.read_text())
    assert cert["mqs"]["status"] == "NOT_APPLICABLE" and "decoders" in cert["not_applicable"] and cert["gates"] == []
    (row,) = export_csv([out], tmp_path / "models.csv")
    assert (row["stack"], row["status"], row["mqs_score"], row["g4"]) == ("ref", "NOT_APPLICABLE", "", "")


def test_registry_rows_per_model_and_stack(certified, tiny, tmp_path):
    """models.csv: one row per model and stack (builtin first); a registry from before the stack column
    is read as builtin's rows and kept."""
    registry = tmp_path / "models.csv"
    with open(registry, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEGACY_COLUMNS)
        w.writeheader()
        w.writerow({c: "" for c in LEGACY_COLUMNS} | {"model_id": "test/tiny-llama", "status": "PENDING"})
    rows = export_csv([tiny["dir"] / "certify/wrong.json", tiny["dir"] / "certify/ref.json"], registry)
    assert [(r["model_id"], r["stack"], r["status"]) for r in rows] == [
        ("test/tiny-llama", "builtin", "PENDING"), ("test/tiny-llama", "ref", "CERTIFIED"),
        ("test/tiny-llama", "wrong", "BLOCKED")]
    assert tuple(read_csv(registry)[0]) == COLUMNS and rows[2]["g4"] == "false" and rows[1]["g4"] == "true"


def test_the_report_shows_each_stack_beside_builtin(certified, tiny, tmp_path):
    """The certification table: builtin's row, then each stack's, with gateways, MQS, grade, status and
    failed scenarios; the stacks' failures get their Five Whys."""
    import shutil

    from apr_qa.layout import path
    from apr_qa.report.render import to_markdown
    from apr_qa.report.board import _certification_blocks, _certifications

    results = tmp_path / "results"
    for name in ("ref", "wrong"):
        target = path(results, "stack_certification", model="tiny", stack=name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny["dir"] / "certify" / f"{name}.json", target)
    markdown = to_markdown(_certification_blocks(results, ["tiny"], _certifications(results, ["tiny"]), tmp_path),
                           tmp_path)
    rows = {line.split("|")[3].strip(): line for line in markdown.splitlines() if line.startswith("| tiny ")}
    assert list(rows) == ["builtin", "ref", "wrong"]
    assert "PENDING" in rows["builtin"]  # no builtin certification in this folder
    assert "CERTIFIED" in rows["ref"] and "| A" in rows["ref"] and "FAIL" not in rows["ref"]
    assert "BLOCKED" in rows["wrong"] and "| FAIL |" in rows["wrong"] and "q8_0: T9" in rows["wrong"]
    assert "tiny (test/tiny-llama) on stack wrong:" in markdown and "Certification: **RED**" in markdown


# -- llama.cpp on real weights -------------------------------------------------------------------------

LLAMACPP_PLAYBOOK = {"extends": "smoke", "name": "llamacpp-smoke", "failure_policy": "collect-all",
                     "categories": ["QUAL", "PERF", "COMP"], "test_matrix": {"modalities": ["run", "chat", "serve"]},
                     "prompts": [{"id": "capital", "input": "The capital of France is", "expected_pattern": "Paris",
                                  "turns": ["Hello!", "What is the capital of France?"], "category": "QUAL"}]}


@pytest.mark.slow
def test_llamacpp_is_certified_on_smollm2(llama_cpp, smollm2_gguf, tmp_path):
    """SmolLM2's q8_0 on llama.cpp: evaluated on the stack, then certified on it. The scenarios run
    through the llamacpp adapter (the run modality, and a two-turn chat whose second turn holds the
    first reply); serve is apr-qa's own server, skipped with the reason."""
    apr = tmp_path / "smollm2.q8_0.apr"
    convert(smollm2_gguf, apr, "q8_0")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text('metadata: {version: "t"}\nprompts:\n  - {id: capital, input: "The capital of France is", '
                       'expected_pattern: "Paris", category: sanity}\n')
    evaluation = tmp_path / "llamacpp.json"
    assert main(["eval", str(apr), "--reference", str(smollm2_gguf), "--prompts", str(prompts), *FAST,
                 "--stack", "llamacpp", "--json", str(evaluation)]) == 0
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(yaml.safe_dump(LLAMACPP_PLAYBOOK))
    out = tmp_path / "certify" / "llamacpp.json"
    rc = main(["certify", "--model-id", "HuggingFaceTB/SmolLM2-135M-Instruct", "--playbook", str(playbook),
               "--variant", f"q8_0={apr}", "--stack", "llamacpp", "--evidence", str(evaluation), "--output", str(out)])
    cert = json.loads(out.read_text())
    assert cert["certified_stack"]["name"] == "llamacpp" and cert["certified_stack"]["fingerprint"]
    mqs = cert["mqs"]
    assert mqs["gateways_passed"] and mqs["status"] in ("CERTIFIED", "PROVISIONAL") and rc == 0, mqs
    scenarios = {g["details"]["scenario"]["modality"]: g for g in cert["gates"] if "scenario" in g["details"]}
    assert "Paris" in scenarios["run"]["details"]["output"] and scenarios["run"]["details"]["outcome"] == "pass"
    chat = scenarios["chat"]["details"]
    assert chat["outcome"] in ("pass", "fail") and len(chat["replies"]) == 2 and chat["output"]  # both turns ran
    assert scenarios["serve"]["details"]["outcome"] == "skip" and "apr-qa's HTTP server" in \
        scenarios["serve"]["details"]["reason"]
    perf = next(g for g in cert["gates"] if g["id"] == "PERF:tokens-per-s:q8_0/cpu")
    assert perf["passed"] and perf["details"]["tokens_per_s"] > 1
    assert any(g["id"] == "T9" and g["passed"] for g in cert["gates"])  # its own evaluation's logits


def test_after_a_failed_run_only_the_artifacts_gates_block_another_stack(tmp_path, monkeypatch):
    """The onerror certification: builtin's evaluation gate (T4) blocks builtin only; a validation gate
    (the artifact's: C8) blocks every stack, through the gateway the catalogue assigns it (G0)."""
    from apr_qa.certify.playbooks import load_playbook
    from apr_qa.stacks import StackSpec
    from apr_qa.workflow import blocked

    summary = {"status": "BLOCKED", "stage": "evaluate", "gate": "T4", "level": "fail", "reason": "T4 measured 0"}
    monkeypatch.setattr(blocked, "summarize_results", lambda results, model, variant, events: {
        "model": model, "variant": variant, **summary})
    results, playbook, ref = tmp_path / "results", load_playbook("smoke"), StackSpec.parse(command_stack("ref"))
    out = tmp_path / "ref.json"
    assert blocked.certify_blocked(results, "tiny", "test/tiny", playbook, ["q8_0"], tmp_path / "b.json") is not None
    assert blocked.certify_blocked(results, "tiny", "test/tiny", playbook, ["q8_0"], out, stack=ref) is None
    assert not out.exists()
    summary.update(stage="validate", gate="C8", level="halt", reason="C8 out of tolerance")
    mqs = blocked.certify_blocked(results, "tiny", "test/tiny", playbook, ["q8_0"], out, stack=ref)
    cert = json.loads(out.read_text())
    assert mqs is not None and mqs["status"] == "BLOCKED" and cert["certified_stack"]["name"] == "ref"
    assert not next(g for g in mqs["gateways"] if g["id"] == "G0")["passed"]
