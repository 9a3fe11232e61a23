"""Scenario runner: real child processes on a tiny model; a segfault is a recorded crash (G3) that zeroes the MQS."""

from __future__ import annotations

import sys
import textwrap

import pytest

from apr_qa.certify import five_whys
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
