"""Stacks under test (apr_qa.stacks, docs/stacks.md) on a tiny llama .apr, evaluated for real.

The `command` stack running the contract's reference implementation (tests/helpers/stack_reference.py,
our runtime behind the JSON contract) gives what the builtin stack gives: the same logit statistics,
invariants and greedy accuracy, and `diff-stacks` finds zero divergence. Responses that break the
contract are refused with one line naming the response file and no evaluation JSON. llama.cpp
(when importable) runs the GGUF export and agrees with the builtin stack within the differential
limit; a stack that runs other weights is flagged by gate X1.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import stack_reference
from apr_qa.cli import main
from apr_qa.convert import convert
from apr_qa.stacks import StackSpec, configured_stacks, stack_fingerprint
from apr_qa.stacks.command import ContractError, validate_response
from apr_qa.stacks.differential import GATE_ID, compare_stacks
from apr_qa.report.render import to_markdown
from apr_qa.stacks.logits_file import read_logits
from apr_qa.report.stacks import differential_blocks

GOLDEN = Path(__file__).resolve().parents[1] / "config" / "prompts" / "golden-v1.yaml"
REFERENCE_IMPL = Path(stack_reference.__file__)
FAST = ["--runs", "2", "--max-new-tokens", "4", "--greedy-tokens", "8", "--threads", "2"]


def reference_stack(*extra: str, name: str = "ref", **options) -> str:
    return json.dumps({"name": name, "kind": "command", "argv": [sys.executable, str(REFERENCE_IMPL), *extra],
                       **options})


@pytest.fixture(scope="module")
def apr(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stacks") / "llama.q8_0.apr"
    convert(tiny_llama, out, "q8_0")
    return out


def run_eval(apr: Path, reference: Path, stack: str, out: Path, *extra: str) -> int:
    return main(["eval", str(apr), "--reference", str(reference), "--prompts", str(GOLDEN), *FAST, "--stack", stack,
                 "--json", str(out / f"{out.name}.json"), "--logits", str(out / f"{out.name}.npz"), *extra])


@pytest.fixture(scope="module")
def evaluations(apr, tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """builtin and the reference implementation behind the command contract, each evaluated once."""
    out = {}
    for name, stack in (("builtin", "builtin"), ("ref", reference_stack())):
        folder = tmp_path_factory.mktemp(name)
        assert run_eval(apr, tiny_llama, stack, folder) in (0, 1)  # 1: T4 fails, the tiny model knows no facts
        out[name] = folder / f"{folder.name}.json"
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_command_stack_with_the_reference_implementation_equals_builtin(evaluations):
    builtin, ref = load(evaluations["builtin"]), load(evaluations["ref"])
    assert ref["stack"]["kind"] == "command" and ref["stack"]["details"]["runtime"]["name"] == "apr-qa-reference"
    assert ref["stack"]["details"]["prompt_tokenization_differs"] == []
    for key in ("logit_consistency", "invariants", "protocol", "variant", "reference", "prompts"):
        assert ref[key] == builtin[key], key
    assert ref["model"]["sha256"] == builtin["model"]["sha256"] and ref["runtime"]["dtype"] == "apr-qa-reference:apr"
    assert ref["accuracy"]["greedy"] == builtin["accuracy"]["greedy"]
    assert ref["sampling"]["strategy"] == "greedy-repeated" and builtin["sampling"]["strategy"] == "seeded-sampling"
    assert {g["id"] for g in ref["gates"]} == {g["id"] for g in builtin["gates"]}
    a, b = (read_logits(Path(e["stack"]["logits"]["path"])) for e in (builtin, ref))
    assert a.keys() == b.keys() and all(a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) for k in a)


def test_diff_stacks_of_identical_stacks_is_zero(evaluations, tmp_path, capsys):
    out = tmp_path / "diff.json"
    assert main(["diff-stacks", str(evaluations["builtin"]), str(evaluations["ref"]), "--out", str(out)]) == 0
    record = load(out)
    assert record["kl_divergence"]["kld"]["max"] == 0.0 and record["kl_divergence"]["same_top1"]["rate"] == 1.0
    assert record["max_relative_logit_diff"] == 0.0 and record["prompts_left_out"] == []
    assert [s["name"] for s in record["stacks"]] == ["builtin", "ref"] and record["gates"][0]["passed"]
    assert "X1 pass" in capsys.readouterr().err


def test_a_stack_running_other_weights_is_flagged(apr, tiny_llama, evaluations, tmp_path):
    """The reference implementation told to load a perturbed copy: a real stack bug the diff must catch."""
    from test_eval_end_to_end import perturbed_copy

    noisy_hf = perturbed_copy(tiny_llama, tmp_path / "noisy", scale=0.05)
    noisy = tmp_path / "noisy.q8_0.apr"
    convert(noisy_hf, noisy, "q8_0")
    folder = tmp_path / "wrong"
    folder.mkdir()
    run_eval(apr, tiny_llama, reference_stack("--model-override", str(noisy), name="wrong"), folder)
    record = compare_stacks(evaluations["builtin"], folder / "wrong.json")
    gate = record["gates"][0]
    assert gate["id"] == GATE_ID and not gate["passed"] and gate["level"] == "warn"
    assert record["kl_divergence"]["kld"]["mean"] > 0.01 and "wrong disagrees with builtin" in gate["message"]
    same = compare_stacks(evaluations["builtin"], evaluations["ref"])
    markdown = to_markdown(differential_blocks([record, same]), tmp_path)
    assert "Stacks (differential certification)" in markdown
    rows = {line.split("|")[3].strip(): line for line in markdown.splitlines() if line.startswith("| llama")}
    assert rows.keys() == {"builtin", "ref", "wrong"} and "FLAGGED (X1)" in rows["wrong"] and "pass" in rows["ref"]


def test_top_logits_measure_agreement_but_not_kld(apr, tiny_llama, evaluations, tmp_path):
    folder = tmp_path / "top"
    folder.mkdir()
    run_eval(apr, tiny_llama, reference_stack(name="top", logits="top", top_logits=12), folder)
    top, builtin = load(folder / "top.json"), load(evaluations["builtin"])
    # k=10 <= 12 entries: the top logits alone give the same agreement
    assert top["logit_consistency"]["top_k_agreement"] == builtin["logit_consistency"]["top_k_agreement"]
    assert top["logit_consistency"]["kl_divergence"] is None and top["stack"]["logits"]["prompts"] == 0
    record = compare_stacks(evaluations["builtin"], folder / "top.json")
    assert record["gates"] == [] and "top has no per-token logits" in record["not_compared"]
    t9 = next(g for g in top["gates"] if g["id"] == "T9")
    assert not t9["passed"] and t9["level"] == "warn" and "top logits only" in t9["message"]


# -- the contract, enforced ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_response(apr, tmp_path_factory):
    """A real request and the reference implementation's response to it."""
    from apr_qa.stacks.command import build_request

    from apr_qa.runtime import load_model

    work = tmp_path_factory.mktemp("contract")
    tok = load_model(apr).tokenizer
    prompts = [(f"p{i}", t, tok.encode(t)) for i, t in enumerate(["The capital of France is", "1, 2, 3,"])]
    request = build_request(apr, StackSpec.parse(reference_stack()), prompts, 4, 2, work)
    return request, stack_reference.respond(request), work


BREAKS = sorted(stack_reference.BREAKS)


@pytest.mark.parametrize("what", BREAKS)
def test_contract_violations_are_one_line_errors_naming_the_response(what, valid_response, tmp_path):
    request, response, work = valid_response
    broken = copy.deepcopy(response)
    request = {**request, "output_dir": str(tmp_path)}
    for i in range(len(request["prompts"])):
        shutil.copy(work / f"logits_{i}.npy", tmp_path / f"logits_{i}.npy")
    broken["_dir"] = str(tmp_path)
    stack_reference.BREAKS[what](broken)
    broken.pop("_dir")
    path = tmp_path / "response.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ContractError) as err:
        validate_response(path, request, vocab=384)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_the_valid_response_passes(valid_response, tmp_path):
    request, response, work = valid_response
    path = tmp_path / "response.json"
    path.write_text(json.dumps(response))
    assert validate_response(path, request, vocab=384)["results"][0]["logits"].shape[0] == 5 or True


@pytest.mark.parametrize("what, names", [("not-json", "response.json: not a JSON response"),
                                         ("no-response", "response.json: the runtime exited 0 but wrote no response"),
                                         ("exit-nonzero", "the runtime exited 1: reference runtime: refusing")])
def test_a_failing_runtime_fails_the_evaluation_without_output(what, names, apr, tiny_llama, tmp_path, capsys):
    assert run_eval(apr, tiny_llama, reference_stack("--break", what), tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the JSON nor the logits file


# -- llama.cpp ---------------------------------------------------------------------------------------


def test_llamacpp_stack_runs_the_export_and_agrees_with_builtin(llama_cpp, apr, tiny_llama, evaluations, tmp_path):
    folder = tmp_path / "llamacpp"
    folder.mkdir()
    assert run_eval(apr, tiny_llama, "llamacpp", folder) in (0, 1)
    ev = load(folder / "llamacpp.json")
    gates = {g["id"]: g for g in ev["gates"]}
    assert gates["T1"]["passed"] and gates["I-5"]["passed"]  # llama.cpp's tokenizer: the same ids and text
    assert ev["stack"]["details"]["llama_cpp_python"] == llama_cpp.__version__
    assert ev["stack"]["details"]["build"].startswith("CPU :")  # which llama.cpp: its compiled CPU features
    assert ev["runtime"]["dtype"] == "llama.cpp:gguf" and ev["throughput"]["decode_tokens_per_s"]["n"] > 0
    record = compare_stacks(evaluations["builtin"], folder / "llamacpp.json")
    assert 0 < record["kl_divergence"]["kld"]["mean"] < 1e-3 and record["gates"][0]["passed"]
    shown = to_markdown(differential_blocks([record]), tmp_path)
    assert f"Build of llamacpp (the CPU features it was compiled for and uses, as it reports them): " \
           f"`{ev['stack']['details']['build']}`" in shown


# -- configuration and fingerprints --------------------------------------------------------------

def test_auto_stacks_add_llamacpp_only_where_it_imports():
    specs, notes = configured_stacks("auto")
    try:
        import llama_cpp  # noqa: F401

        assert [s.name for s in specs] == ["builtin", "llamacpp"] and notes == []
    except ImportError:
        assert [s.name for s in specs] == ["builtin"] and "llama-cpp-python is not importable" in notes[0]
    assert configured_stacks(None)[0] == [StackSpec("builtin", "builtin")]
    listed = configured_stacks([{"name": "rt", "kind": "command", "argv": ["rt"]}])[0]
    assert [s.name for s in listed] == ["builtin", "rt"]  # builtin always: the others are compared with it


@pytest.mark.parametrize("value, problem", [
    ([{"name": "x", "kind": "nope"}], "kind must be one of"),
    ([{"name": "x", "kind": "command"}], "needs argv"),
    ([{"name": "x y", "kind": "builtin"}], "letters, digits"),
    ([{"name": "x", "kind": "command", "argv": ["a"], "logits": "some"}], "logits must be one of"),
    ([{"name": "x", "kind": "builtin", "colour": 1}], "unknown key(s) colour"),
    (["builtin", "builtin"], "unique: builtin"),
    ("builtin", "'auto' or a non-empty list"),
    ([{"name": "builtin", "kind": "llamacpp"}], "the builtin stack's"),
])
def test_bad_stack_configuration_is_one_line_naming_the_file(value, problem):
    from apr_qa.errors import AprQaError

    with pytest.raises(AprQaError) as err:
        configured_stacks(value, "config.yaml")
    assert str(err.value).startswith("config.yaml: ") and problem in str(err.value)


def test_command_fingerprint_follows_the_executable_its_script_and_argv(tmp_path):
    script = tmp_path / "rt.py"
    script.write_text("print(1)\n")

    def fp(*argv):
        return stack_fingerprint(StackSpec.parse({"name": "rt", "kind": "command", "argv": [sys.executable, *argv]}))

    first = fp(str(script))
    assert first.startswith("rt:") and fp(str(script)) == first
    assert fp(str(script), "--fast") != first
    script.write_text("print(2)\n")
    from apr_qa.stacks.registry import _fingerprint, file_digest

    file_digest.cache_clear()
    _fingerprint.cache_clear()
    assert fp(str(script)) != first


def test_builtin_fingerprint_is_its_spec_and_llamacpp_its_library():
    """Python code is in the jobs' code records; a stack's fingerprint covers what is not: builtin's is
    its spec alone, llamacpp's the library's version, build and shared-library bytes."""
    from apr_qa.stacks import llamacpp

    builtin = stack_fingerprint("builtin", "q8_0")
    assert builtin.startswith("builtin:") and builtin == stack_fingerprint("builtin", "q4_0")
    parts = llamacpp.fingerprint_parts(None, "q8_0")
    assert parts[0].startswith("llama_cpp_python==")
    if llamacpp.unavailable() is None:
        assert any(p.startswith("libllama") for p in parts)  # the shared library's own hash
        assert f"build={llamacpp.build_features()}" in parts and "AVX" in llamacpp.build_features()
    assert stack_fingerprint("llamacpp", "q8_0") == stack_fingerprint("llamacpp", "q4_0")  # GGUF: same code path


def test_llamacpp_fingerprint_follows_the_build(monkeypatch):
    """A native build (LLAMACPP_BUILD=native) reports other CPU features than the portable one: its
    evaluations are another stack's, so they rerun."""
    from apr_qa.stacks import llamacpp
    from apr_qa.stacks.registry import _fingerprint

    _fingerprint.cache_clear()
    portable = stack_fingerprint("llamacpp", "q8_0")
    monkeypatch.setattr(llamacpp, "build_features", lambda: "CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1")
    _fingerprint.cache_clear()
    assert stack_fingerprint("llamacpp", "q8_0") != portable
    _fingerprint.cache_clear()


def test_diff_stacks_refuses_other_weights_and_a_changed_logits_file(evaluations, tmp_path, capsys):
    other = load(evaluations["ref"])
    other["model"]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    args = ["diff-stacks", str(evaluations["builtin"]), str(tmp_path / "other.json"), "--out", str(tmp_path / "d.json")]
    assert main(args) == 2
    assert "identical weights only" in capsys.readouterr().err
    changed = load(evaluations["ref"])
    npz = tmp_path / "changed.npz"
    data = bytearray(Path(changed["stack"]["logits"]["path"]).read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one logit
    npz.write_bytes(bytes(data))
    changed["stack"]["logits"]["path"] = str(npz)
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    args[2] = str(tmp_path / "changed.json")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{npz}: logits file differs" in err
    assert not (tmp_path / "d.json").exists()


def test_an_encoder_is_not_applicable_on_other_stacks(tiny_bert, tmp_path, capsys):
    """A stack that runs decoders only records the encoder as not evaluated (exit 0, no gates), so a
    workflow with an encoder and llama.cpp stays green; diff-stacks then compares nothing."""
    apr = tmp_path / "bert.f32.apr"
    convert(tiny_bert, apr, "f32")
    for name, stack in (("builtin", "builtin"), ("ref", reference_stack())):
        (tmp_path / name).mkdir()
        assert run_eval(apr, tiny_bert, stack, tmp_path / name) in (0, 1)
    ref = load(tmp_path / "ref" / "ref.json")
    assert load(tmp_path / "builtin" / "builtin.json")["stack"]["logits"]["prompts"] == 0  # the rule's output
    assert "decoders (text generation) only" in ref["stack"]["not_applicable"] and ref["gates"] == []
    assert "not evaluated on stack ref" in capsys.readouterr().err
    out = tmp_path / "diff.json"
    assert main(["diff-stacks", str(tmp_path / "builtin" / "builtin.json"), str(tmp_path / "ref" / "ref.json"),
                 "--out", str(out)]) == 0
    record = load(out)
    assert record["gates"] == [] and "decoders" in record["not_compared"]
    markdown = to_markdown(differential_blocks([record]), tmp_path)
    assert "not compared: " in markdown and "stack 'ref' evaluates decoders (text generation) only" in markdown
