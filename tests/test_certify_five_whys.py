"""Five Whys chains derived from real validation evidence (and from record shapes of other stages)."""

from __future__ import annotations

import json

from apr_qa.five_whys import Context, analyze, annotate
from apr_qa.evidence import Evidence


def test_c6_chain_names_missing_tensors_and_their_source_file(tiny_llama_tied, tiny_llama_sharded, tmp_path):
    from apr_qa.apr import AprReader
    from apr_qa.convert import convert
    from apr_qa.validate import validate

    apr = tmp_path / "tied.apr"
    convert(tiny_llama_tied, apr, "f32")
    # Validated against an untied, sharded source: lm_head.weight is missing from the .apr.
    records = validate(apr, tiny_llama_sharded)
    c6 = next(r for r in records if r.id == "C6")
    assert not c6.passed
    with AprReader(apr) as reader:
        meta = reader.metadata
    index = json.loads((tiny_llama_sharded / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["lm_head.weight"]
    chain = analyze(c6, Context(records, meta, index))
    assert chain.whys[0].startswith("C6 (parameter count matches source) failed: measured")
    assert "lm_head.weight" in chain.whys[1]
    assert shard in chain.whys[2] and "NOT among the converted files" in chain.whys[2]
    assert shard in chain.root_cause
    annotate(records, Context(records, meta, index))
    assert all("five_whys" in r.details for r in records if not r.passed)
    assert all("five_whys" not in r.details for r in records if r.passed)


def test_c8_chain_names_tensors_and_dtype(tiny_llama, tmp_path):
    from apr_qa.convert import convert
    from apr_qa.validate import ValidationConfig, validate

    apr = tmp_path / "q4.apr"
    convert(tiny_llama, apr, "q4_0")
    cfg = ValidationConfig()
    cfg.tolerances["Q4_0"]["cosine"] = 0.999999  # far tighter than 4-bit blocks can hold
    records = validate(apr, tiny_llama, cfg)
    c8 = next(r for r in records if r.id == "C8")
    assert not c8.passed
    chain = analyze(c8, Context(records))
    assert "tensors exceeded their tolerance" in chain.whys[1]
    assert any(name in chain.whys[1] for name in c8.details["failures"])
    assert chain.whys[2].startswith("their stored dtypes: Q4_0 x")
    assert "Q4_0" in chain.root_cause


def test_d4_t4_and_generic():
    d4 = Evidence("D4", "checksum valid", False, 1, 0, "halt", "1 file differs",
                  {"files": [{"file": "model.safetensors", "expected": "aa" * 32, "actual": "bb" * 32},
                             {"file": "config.json", "expected": "cc" * 32, "actual": "cc" * 32}]})
    chain = analyze(d4)
    assert chain.whys[1] == f"model.safetensors: sha256 expected {'aa' * 32}, actual {'bb' * 32}"
    assert len(chain.whys) == 2 and "model.safetensors" in chain.root_cause

    t4 = Evidence("T4", "accuracy threshold", False, 0.4, 0.5, "fail", "",
                  {"per_prompt": [{"id": "capital", "expected_pattern": "Paris", "output": " London", "passed": False},
                                  {"id": "count", "expected_pattern": "5", "output": " 5", "passed": True}]})
    chain = analyze(t4)
    assert chain.whys[1] == "prompt capital expected /Paris/, model produced ' London'"
    assert chain.root_cause == "1 prompts were answered wrongly"

    other = Evidence("Z7", "something new", False, 3.5, 2.0, "warn", "too slow", {"k": 1})
    chain = analyze(other)
    assert "measured 3.5, threshold 2.0" in chain.whys[0] and "too slow" in chain.whys[0]
    assert "3.5" in chain.root_cause and "2.0" in chain.root_cause


def test_inconclusive_gates_say_how_much_more_to_measure():
    """An undecided T7 or Q1 (the interval spans the limit) gets a chain of its own: the interval, its
    resolution, about how many items would decide it, and what to run; a decided one keeps its rule."""
    from apr_qa.evaluation import accuracy_andon, corpus_gates, gates

    # 9 prompts x 5 seeded runs; the variant loses two runs on two prompts: 4.4 points, interval spans 5
    items = [{"id": f"p{i}", "reference": 3, "model": 3 - (i < 2), "runs": 5} for i in range(9)]
    block = accuracy_andon.accuracy_block("decoder", {"value": 25 / 45}, {"value": 27 / 45}, items,
                                          {"pairs": 45, "lost": 2, "gained": 0})
    t7 = gates.gate_t7_accuracy(block)
    assert t7.details["verdict"] == "inconclusive" and t7.message.startswith("inconclusive")
    chain = analyze(t7)
    assert "spans the 5-point limit" in chain.whys[1]
    needed = int(chain.whys[2].split("about ")[1].split(" ")[0])
    half, distance = t7.measured["resolution_points"], 5.0 - t7.measured["degradation_points"]
    assert needed > 45 and abs(needed - 45 * (half / distance) ** 2) <= 1
    assert "golden-v2" in chain.countermeasure and "too few golden prompts" in chain.root_cause

    ratio = {"value": 0.985, "ci_low": 0.975, "ci_high": 0.995, "accuracy": 0.394, "accuracy_reference": 0.4,
             "resolution": 0.01}
    q1 = corpus_gates.gate_q1({"next_token_accuracy": ratio, "tokens_scored": 4096, "name": "wiki-en-v1"}, 0.99)
    chain = analyze(q1)
    assert q1.details["verdict"] == "inconclusive" and "spans the target 0.99" in chain.whys[1]
    assert "about 16384 would decide it (now 4096)" in chain.whys[2] and "corpus.tokens" in chain.countermeasure

    failed = corpus_gates.gate_q1({"next_token_accuracy": {**ratio, "ci_high": 0.98}, "tokens_scored": 4096,
                                   "name": "wiki-en-v1"}, 0.99)
    assert failed.details["verdict"] == "fail" and "would decide" not in " ".join(analyze(failed).whys)
