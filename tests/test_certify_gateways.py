"""G0 integrity on real models and on tampered configs; G1-G4 from scenario records."""

from __future__ import annotations

import json
import shutil

import pytest

from apr_qa import five_whys
from apr_qa.certify.gateways import g0_integrity, integrity_checks, scenario_gateways
from apr_qa.certify.mqs import score
from apr_qa.evidence import Evidence


@pytest.mark.real_model
def test_g0_real_smollm2_gguf(smollm2_gguf):
    g0 = g0_integrity(smollm2_gguf)
    assert g0.passed, g0.message
    checks = {c["tensor"]: tuple(c["tensors"]) for c in g0.details["checks"]}
    # 30 layers of 9 tensors plus embeddings and final norm (tied head); 9 heads / 3 KV heads of 64
    assert len(checks) == 30 * 9 + 2 and g0.details["architecture"] == "Llama"
    assert checks["model.embed_tokens.weight"] == (49152, 576)
    assert checks["model.layers.29.self_attn.k_proj.weight"] == (192, 576)
    assert checks["model.layers.0.mlp.up_proj.weight"] == (1536, 576)


@pytest.mark.real_model
def test_g0_real_minilm(minilm_dir):
    g0 = g0_integrity(minilm_dir)
    assert g0.passed, g0.message
    assert len(g0.details["checks"]) == 5 + 6 * 16  # embeddings, 16 tensors per layer; the pooler is optional


def test_g0_on_apr_and_a_tampered_config(tiny_llama, tmp_path):
    from apr_qa.convert import convert

    good = tmp_path / "good.apr"
    convert(tiny_llama, good, "f32")
    assert g0_integrity(good).passed

    bad_src = tmp_path / "bad_src"
    shutil.copytree(tiny_llama, bad_src)
    cfg = json.loads((bad_src / "config.json").read_text())
    cfg["num_hidden_layers"] = cfg["num_hidden_layers"] + 1
    (bad_src / "config.json").write_text(json.dumps(cfg))
    bad = tmp_path / "bad.apr"
    convert(bad_src, bad, "f32")
    g0 = g0_integrity(bad)
    assert not g0.passed and g0.level == "halt"
    assert "9 tensors the config implies are missing (model.layers.2." in g0.message
    assert score([g0]).raw == 0
    chain = five_whys.analyze(g0)
    assert "model.layers.2." in chain.whys[1] and "lacks it" in chain.whys[1]


def test_integrity_checks_catch_each_dimension(tiny_llama):
    from apr_qa.arch import architecture_for

    cfg = json.loads((tiny_llama / "config.json").read_text())
    table = list(architecture_for(cfg).tensors().items())
    assert all(c.ok for c in integrity_checks(architecture_for(cfg), table))
    for field, value in (("vocab_size", 101), ("hidden_size", 32), ("num_hidden_layers", 3),
                         ("num_key_value_heads", 4), ("intermediate_size", 256), ("head_dim", 8)):
        bad = [c for c in integrity_checks(architecture_for({**cfg, field: value}), table) if not c.ok]
        assert bad, field
    # a gap in the layer indices: layer 1's tensors missing, layer 5's unexplained
    gap = [(n.replace("layers.1.", "layers.5."), s) for n, s in table]
    bad = {c.field for c in integrity_checks(architecture_for(cfg), gap) if not c.ok}
    assert bad == {"present", "expected"}


def test_g0_unreadable_file_fails(tmp_path):
    bad = tmp_path / "x.apr"
    bad.write_bytes(b"not an apr file at all" * 10)
    g0 = g0_integrity(bad)
    assert not g0.passed and "x.apr" in g0.message


def _scenario(sid: str, outcome: str, stage: str = "generate", output: str = "", garbage_reasons=(), category="QUAL"):
    d = {"scenario": {"id": sid, "variant": "v", "backend": "cpu", "modality": "run", "prompt_id": sid},
         "category": category, "outcome": outcome, "stage": stage, "reason": f"{outcome} reason", "output": output}
    if output:
        d["garbage"] = {"garbage": bool(garbage_reasons), "reasons": list(garbage_reasons), "metrics": {}}
    return Evidence(f"{category}:{sid}", sid, outcome == "pass", outcome, "ok", "fail", "", d)


def test_g4_quarter_rule_and_g1_g2():
    # 1 garbage output of 4 = 0.25: not more than a quarter -> G4 holds
    recs = [_scenario(f"s{i}", "pass", output="Paris is the capital.") for i in range(3)]
    recs.append(_scenario("g", "fail", output="olumbia+lsi nunca/localENTS", garbage_reasons=["malformed words"]))
    g1, g2, g3, g4 = scenario_gateways(recs)
    assert g1.passed and g2.passed and g3.passed and g4.passed and g4.measured == 0.25
    # 2 of 5 = 0.4 > 0.25 -> G4 fails
    recs.append(_scenario("g2", "fail", output="!!!!!!!!!!!!!!!!!!!!!!", garbage_reasons=["entropy"]))
    assert not scenario_gateways(recs)[3].passed
    # a load failure fails G1; a scenario with no output fails G2
    g1, g2, *_ = scenario_gateways([_scenario("l", "fail", stage="load"), _scenario("n", "fail")])
    assert not g1.passed and not g2.passed
    assert g2.details["failed"] == ["n"]
