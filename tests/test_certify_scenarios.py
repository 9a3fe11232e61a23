"""Scenario runner: real child processes on a tiny model; a segfault is a recorded crash (G3) that zeroes the MQS."""

from __future__ import annotations

import sys
import textwrap

import pytest
import tiny_models

from apr_qa import five_whys
from apr_qa.certify.gateways import scenario_gateways
from apr_qa.certify.mqs import score
from apr_qa.certify.scenarios import Limits, Scenario, run_matrix


@pytest.fixture(scope="module")
def tiny_apr(tiny_llama, tmp_path_factory):
    from apr_qa.convert import convert

    out = tmp_path_factory.mktemp("cert") / "tiny-q8_0.apr"
    convert(tiny_llama, out, "q8_0")
    return out


@pytest.fixture(scope="module")
def faulty_child(tmp_path_factory):
    """The real child protocol and runtime, with faults injected by prompt id: 'boom' segfaults,
    'hang' never answers, and any scenario of a model named *crash-on-load* segfaults while loading."""
    script = tmp_path_factory.mktemp("child") / "faulty_child.py"
    script.write_text(textwrap.dedent("""
        import json, os, signal, sys, time
        from apr_qa.certify.scenarios import _emit, run_one
        from apr_qa.runtime import load_model

        job = json.load(sys.stdin)
        if "crash-on-load" in job["model"]:
            os.kill(os.getpid(), signal.SIGSEGV)
        model = load_model(job["model"])
        _emit({"event": "loaded"})
        for s in job["scenarios"]:
            if s["prompt"]["id"] == "boom":
                os.kill(os.getpid(), signal.SIGSEGV)
            if s["prompt"]["id"] == "hang":
                time.sleep(3600)
            _emit({"event": "result", **run_one(model, s)})
    """))
    return [sys.executable, str(script)]


def scen(path, prompt_id: str, modality: str = "run", run: int = 1, category: str = "QUAL",
         timeout_s: float = 60) -> Scenario:
    return Scenario(f"tiny/cpu/{modality}/{prompt_id}/r{run}", "tiny", str(path), "cpu", modality,
                    {"id": prompt_id, "input": "The capital of France is", "category": category},
                    run, max_new_tokens=4, timeout_s=timeout_s)


def test_segfault_is_a_crash_that_zeroes_the_score(tiny_apr, faulty_child):
    scenarios = [scen(tiny_apr, "before"), scen(tiny_apr, "boom"), scen(tiny_apr, "after")]
    records = run_matrix(scenarios, "collect-all", child=faulty_child)
    by_prompt = {r.details["scenario"]["prompt_id"]: r for r in records}
    crash = by_prompt["boom"]
    assert crash.details["outcome"] == "crash"
    assert crash.details["signal"] == "SIGSEGV" and crash.details["returncode"] == -11
    assert "Fatal Python error" not in crash.details["reason"]
    # the scenarios before and after the crash really ran (the latter in a fresh child)
    for pid in ("before", "after"):
        assert by_prompt[pid].details["outcome"] in ("pass", "fail")
        assert len(by_prompt[pid].details["token_ids"]) > 0
    gates = scenario_gateways(records)
    g3 = next(g for g in gates if g.id == "G3")
    assert not g3.passed and g3.measured == 1
    assert g3.details["crashes"][0]["scenario"] == "tiny/cpu/run/boom/r1"
    s = score(gates + records)
    assert s.raw == 0 and s.status == "BLOCKED"
    assert [g.id for g in s.gateways if not g.passed][0] in ("G3", "G4")
    assert "G3" in [g.id for g in s.gateways if not g.passed]
    chain = five_whys.analyze(g3, five_whys.Context(records))
    assert "SIGSEGV" in chain.whys[1] and "tiny/cpu/run/boom/r1" in chain.whys[1]


def test_crash_while_loading_and_stop_policy(tiny_apr, faulty_child, tmp_path):
    bad = tmp_path / "crash-on-load.apr"
    bad.write_bytes(tiny_apr.read_bytes())
    records = run_matrix([scen(bad, "a"), scen(bad, "b")], "collect-all", child=faulty_child)
    assert [r.details["outcome"] for r in records] == ["crash", "skip"]
    assert records[0].details["stage"] == "load"
    g1 = next(g for g in scenario_gateways(records) if g.id == "G1")
    assert not g1.passed

    # stop-on-first: the crash stops the line; later scenarios are recorded as skipped, not lost
    records = run_matrix([scen(tiny_apr, "boom"), scen(tiny_apr, "x")], "stop-on-first", child=faulty_child)
    assert [r.details["outcome"] for r in records] == ["crash", "skip"]
    assert "stop-on-first stopped after tiny/cpu/run/boom/r1" in records[1].details["reason"]


def test_hang_is_a_timeout_and_the_rest_still_runs(tiny_apr, faulty_child):
    records = run_matrix([scen(tiny_apr, "hang", timeout_s=1), scen(tiny_apr, "after")], "collect-all",
                         Limits(load_timeout_s=120, kill_grace_s=1), child=faulty_child)
    assert records[0].details["outcome"] == "timeout"
    assert records[1].details["outcome"] in ("pass", "fail") and records[1].details["token_ids"]
    s = score(scenario_gateways(records) + records)
    assert s.timeouts == 1


def test_real_child_run_is_deterministic_and_missing_model_fails_load(tiny_apr, tmp_path):
    records = run_matrix([scen(tiny_apr, "p", run=1), scen(tiny_apr, "p", run=2),
                          scen(tiny_apr, "edge-empty", category="EDGE")], "collect-all")
    a, b, edge = records
    assert a.details["token_ids"] == b.details["token_ids"] and len(a.details["token_ids"]) == 4
    assert a.details["metrics"]["tokens"] == 4
    assert edge.details["outcome"] == "pass"  # survived (output or a clean refusal)

    missing = run_matrix([scen(tmp_path / "nope.apr", "p")], "collect-all")
    assert missing[0].details["outcome"] == "fail" and missing[0].details["stage"] == "load"
    assert "nope.apr" in missing[0].details["reason"]


def test_real_child_chat_keeps_every_turn(tiny_apr):
    s = Scenario("tiny/cpu/chat/two/r1", "tiny", str(tiny_apr), "cpu", "chat",
                 {"id": "two", "input": "Hi", "turns": ["Hi", "And then?"], "category": "QUAL"}, max_new_tokens=3)
    (r,) = run_matrix([s], "collect-all")
    assert r.details["outcome"] in ("pass", "fail") and len(r.details["replies"]) == 2
    assert r.details["output"] == r.details["replies"][-1]


@pytest.mark.real_model
@pytest.mark.slow
def test_real_smollm2_answer_is_not_garbage(smollm2_gguf):
    s = Scenario("gguf/cpu/run/capital/r1", "gguf", str(smollm2_gguf), "cpu", "run",
                 {"id": "capital", "input": "The capital of France is", "expected_pattern": "Paris",
                  "category": "QUAL"},
                 max_new_tokens=4, timeout_s=600)
    records = run_matrix([s], "collect-all", Limits(load_timeout_s=600, kill_grace_s=120))
    assert records[0].details["outcome"] == "pass", records[0].details["reason"]
    assert "Paris" in records[0].details["output"]
    assert all(g.passed for g in scenario_gateways(records))


def test_serve_of_a_missing_model_is_a_load_failure(tmp_path):
    records = run_matrix([scen(tmp_path / "gone.apr", "p", modality="serve"),
                          scen(tmp_path / "gone.apr", "q", modality="serve")], "collect-all")
    assert [r.details["outcome"] for r in records] == ["fail", "skip"]
    assert records[0].details["stage"] == "load" and "gone.apr" in records[0].details["reason"]


# -- EDGE: only the documented refusal passes ---------------------------------------------------------

@pytest.fixture(scope="module")
def raising_child(tmp_path_factory):
    """The real child (child_main and its error reporting) with the runtime failing by prompt id:
    'typeerror' raises a TypeError, 'multiline' an AprQaError subclass whose message keeps its line
    break (AprQaError itself always joins its message into one line)."""
    script = tmp_path_factory.mktemp("child") / "raising_child.py"
    script.write_text(textwrap.dedent("""
        import sys
        from apr_qa.certify import scenarios
        from apr_qa.errors import AprQaError

        class RawMessage(AprQaError):
            def __init__(self, message):
                Exception.__init__(self, message)  # skips the one-line normalisation

        real = scenarios.run_one

        def run_one(model, s):
            if s["prompt"]["id"] == "typeerror":
                raise TypeError("unsupported operand type(s)")
            if s["prompt"]["id"] == "multiline":
                raise RawMessage("first line\\nsecond line")
            return real(model, s)

        scenarios.run_one = run_one
        sys.exit(scenarios.child_main())
    """))
    return [sys.executable, str(script)]


def edge(path, prompt_id: str, text: str, modality: str = "run", category: str = "EDGE") -> Scenario:
    return Scenario(f"tiny/cpu/{modality}/{prompt_id}/r1", "tiny", str(path), "cpu", modality,
                    {"id": prompt_id, "input": text, "category": category}, 1, max_new_tokens=4)


def test_edge_passes_only_on_the_documented_refusal(tiny_apr, raising_child):
    records = run_matrix([edge(tiny_apr, "empty", ""), edge(tiny_apr, "typeerror", "x"),
                          edge(tiny_apr, "multiline", "x"), edge(tiny_apr, "empty-qual", "", category="QUAL")],
                         "collect-all", child=raising_child)
    by_prompt = {r.details["scenario"]["prompt_id"]: r for r in records}
    # the runtime refuses an empty prompt with a one-line AprQaError: the edge input is handled
    refused = by_prompt["empty"]
    assert refused.passed and refused.details["outcome"] == "pass", refused.details["reason"]
    assert refused.details["refusal"] and refused.details["reason"].startswith("refused: ")
    assert refused.details["exception_type"] != "TypeError"
    # any other exception is the runtime failing on the input, with its type in the evidence
    crashed = by_prompt["typeerror"]
    assert not crashed.passed and crashed.details["outcome"] == "fail"
    assert crashed.details["exception_type"] == "TypeError" and "TypeError" in crashed.details["reason"]
    assert "documented refusal" in crashed.message
    multiline = by_prompt["multiline"]
    assert not multiline.passed and multiline.details["exception_type"] == "RawMessage"
    assert not multiline.details["refusal"]
    # a refusal of a normal prompt is a failure, not handling
    assert not by_prompt["empty-qual"].passed and by_prompt["empty-qual"].details["outcome"] == "fail"


def test_edge_refusal_over_the_server(tiny_apr):
    """The server answers the runtime's refusal with 400 naming the AprQaError's type: an edge input
    passes, a normal prompt fails."""
    records = run_matrix([edge(tiny_apr, "empty", "", modality="serve"),
                          edge(tiny_apr, "empty-qual", "", modality="serve", category="QUAL")], "collect-all")
    edge_record, qual = records
    assert edge_record.passed and edge_record.details["refusal"], edge_record.details["reason"]
    assert "HTTP 400" in edge_record.details["reason"] and edge_record.details["exception_type"] != "HTTP 400"
    assert not qual.passed


def test_judge_of_error_answers():
    from apr_qa.certify.scenarios import http_error_result, judge

    s = edge("m.apr", "e", "")
    assert judge(s, {"event": "error", "error": "AprQaError: empty", "message": "empty", "error_type": "AprQaError",
                     "refusal": True}).outcome == "pass"
    for bad in ({"event": "error", "error": "IndexError: list index out of range", "error_type": "IndexError",
                 "refusal": False},
                {"event": "error", "error": "AprQaError: a\nb", "message": "a\nb", "error_type": "AprQaError",
                 "refusal": True},
                {"event": "error", "error": "RuntimeError: old child", "refusal": None}):
        o = judge(s, bad)
        assert o.outcome == "fail" and o.extra["exception_type"] in o.reason, bad
    # a 500 (the runtime failing) and a 400 of request validation are not refusals
    assert judge(s, http_error_result(500, b'{"error": {"message": "TypeError: x", "exception": "TypeError"}}')
                 ).outcome == "fail"
    assert judge(s, http_error_result(400, b'{"error": {"message": "\'prompt\' must be a string"}}')).outcome == "fail"
    assert judge(s, http_error_result(400, b'{"error": {"message": "UnsupportedError: too long", '
                                           b'"exception": "UnsupportedError"}}')).outcome == "pass"


# -- encoders: QUAL compares the embedding with the reference's ---------------------------------------

@pytest.fixture(scope="module")
def bert_variants(tiny_bert, tmp_path_factory):
    from apr_qa.convert import convert

    d = tmp_path_factory.mktemp("bert")
    for level in ("q8_0", "q4_0"):
        convert(tiny_bert, d / f"bert.{level}.apr", level)
    other = tiny_models.make_tiny_bert(d / "other-weights", seed=1)  # same shapes, different weights
    return d, other


def bert_scenario(apr, level: str, reference) -> Scenario:
    return Scenario(f"{level}/cpu/run/capital/r1", level, str(apr), "cpu", "run",
                    {"id": "capital", "input": "The capital of France is", "category": "QUAL"}, 1,
                    level=level, reference=str(reference) if reference else None)


def test_encoder_qual_compares_with_the_reference_embedding(tiny_bert, bert_variants):
    from apr_qa.evaluation.encoder_eval import DEFAULT_MIN_COSINE

    d, other = bert_variants
    right, wrong, none = run_matrix([bert_scenario(d / "bert.q8_0.apr", "q8_0", tiny_bert),
                                     bert_scenario(d / "bert.q8_0.apr", "q8_0", other),
                                     bert_scenario(d / "bert.q8_0.apr", "q8_0", None)], "collect-all")
    # the same text through the source weights: the q8_0 level's cosine limit, from the evaluation's table
    assert right.passed, right.details["reason"]
    assert right.details["min_cosine"] == DEFAULT_MIN_COSINE["q8_0"]
    assert right.details["cosine"] >= DEFAULT_MIN_COSINE["q8_0"]
    # a finite vector from other weights is not the right embedding
    assert not wrong.passed and wrong.details["cosine"] < DEFAULT_MIN_COSINE["q8_0"]
    assert "below the q8_0 limit" in wrong.details["reason"]
    # nothing to compare with: not a pass
    assert not none.passed and "no reference embedding" in none.details["reason"]
    # the level decides the limit: q4_0 passes at its own limit, not at f32's
    q4, q4_as_f32 = run_matrix([bert_scenario(d / "bert.q4_0.apr", "q4_0", tiny_bert),
                                bert_scenario(d / "bert.q4_0.apr", "f32", tiny_bert)], "collect-all")
    assert q4.passed and q4.details["cosine"] < DEFAULT_MIN_COSINE["f32"]
    assert not q4_as_f32.passed
