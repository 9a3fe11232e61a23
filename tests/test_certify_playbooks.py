"""Playbook templates validate against the schema; model playbooks deep-merge over them; plan sizes."""

from __future__ import annotations

import pytest
import yaml

from apr_qa.certify.playbooks import TIERS, Variant, deep_merge, load_playbook, plan, select_variants
from apr_qa.errors import AprQaError

VARIANTS = [Variant("st", "/m/st", "safetensors"), Variant("gguf", "/m/x.gguf", "gguf"),
            Variant("q4", "/m/q4.apr", "apr", "q4_0"), Variant("q8", "/m/q8.apr", "apr", "q8_0"),
            Variant("f16", "/m/f16.apr", "apr", "f16"), Variant("f32", "/m/f32.apr", "apr", "f32"),
            Variant("bf16", "/m/bf16.apr", "apr", "bf16"), Variant("q4k", "/m/q4k.apr", "apr", "q4_k")]


@pytest.mark.parametrize("tier", TIERS)
def test_templates_are_valid(tier):
    pb = load_playbook(tier)
    assert pb["tier"] == tier
    assert pb["thresholds"]["mqs_pass"] == (900 if tier == "deep" else 700)


def test_tier_matrices():
    smoke = plan(load_playbook("smoke"), VARIANTS)
    # one variant (first apr level the tier builds: q8_0) x cpu x run x 2 prompts x 1 run
    assert {s.variant for s in smoke} == {"q8"} and len(smoke) == 2
    mvp = load_playbook("mvp")
    combos = {(s.variant, s.backend, s.modality) for s in plan(mvp, VARIANTS)}
    # 3 formats (st, gguf, q8 apr) x 2 backends x 3 modalities = 18
    assert len(combos) == 18
    deep = load_playbook("deep")
    chosen = select_variants(deep, VARIANTS)
    assert len(chosen) == len(VARIANTS)  # every variant
    scenarios = plan(deep, VARIANTS)
    # 8 variants x 2 backends x 3 modalities x 15 prompts x 5 runs = 3600
    assert len(scenarios) == 8 * 2 * 3 * len(deep["prompts"]) * 5 == 3600
    assert [v.name for v in chosen[:2]] == ["st", "gguf"]  # playbook order: formats, then levels


def test_deep_merge():
    base = {"a": 1, "m": {"x": 1, "y": [1, 2], "n": {"p": 1}}, "l": [1]}
    over = {"m": {"y": [3], "n": {"q": 2}}, "l": [9], "b": 2}
    assert deep_merge(base, over) == {"a": 1, "b": 2, "l": [9], "m": {"x": 1, "y": [3], "n": {"p": 1, "q": 2}}}
    assert base["m"]["n"] == {"p": 1}  # the template is not modified


def test_model_playbook_overrides_template(tmp_path):
    model = tmp_path / "smollm2-quick.playbook.yaml"
    model.write_text(yaml.safe_dump({
        "extends": "quick", "name": "smollm2-quick", "model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "test_matrix": {"runs_per_prompt": 3}, "thresholds": {"min_tokens_per_s": 2.0}}))
    pb = load_playbook(model)
    assert pb["name"] == "smollm2-quick" and pb["tier"] == "quick"
    assert pb["test_matrix"]["runs_per_prompt"] == 3
    assert pb["test_matrix"]["backends"] == ["cpu"]          # kept from the template
    assert pb["thresholds"] == {"mqs_pass": 700, "min_tokens_per_s": 2.0}
    assert "extends" not in pb
    # a chain: a playbook extending the model playbook by path
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": model.name, "failure_policy": "fail-fast"}))
    assert load_playbook(child)["test_matrix"]["runs_per_prompt"] == 3


def test_invalid_playbooks_name_file_and_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extends": "smoke", "failure_policy": "sometimes"}))
    with pytest.raises(AprQaError, match=r"bad.yaml: invalid playbook at failure_policy"):
        load_playbook(bad)
    bad.write_text(yaml.safe_dump({"extends": "smoke", "test_matrix": {"backends": ["tpu"]}}))
    with pytest.raises(AprQaError, match=r"test_matrix/backends/0"):
        load_playbook(bad)
    bad.write_text(yaml.safe_dump({"extends": "smoke", "surprise": 1}))
    with pytest.raises(AprQaError, match="surprise"):
        load_playbook(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(AprQaError, match="extends itself"):
        load_playbook(loop)
    with pytest.raises(AprQaError, match="not found"):
        load_playbook(tmp_path / "absent.yaml")


def test_stab_runs_wherever_a_tier_lists_it():
    """STAB compares greedy reruns of a prompt: a tier that lists it runs every prompt at least twice
    at temperature 0; the one-run tiers (smoke, mvp, quick) do not list it."""
    listing = {t: "STAB" in load_playbook(t)["categories"] for t in TIERS}
    assert listing == {"smoke": False, "mvp": False, "quick": False, "standard": True, "deep": True}
    for tier in ("standard", "deep"):
        pb = load_playbook(tier)
        runs: dict[tuple, int] = {}
        for s in plan(pb, VARIANTS):
            runs[(s.variant, s.backend, s.modality, s.prompt["id"])] = runs.get(
                (s.variant, s.backend, s.modality, s.prompt["id"]), 0) + 1
        assert runs and min(runs.values()) >= 2 and pb["test_matrix"]["temperature"] == 0.0, tier


def test_a_listed_category_must_be_measurable(tmp_path):
    pb = tmp_path / "pb.yaml"
    pb.write_text(yaml.safe_dump({"extends": "standard", "test_matrix": {"runs_per_prompt": 1}}))
    with pytest.raises(AprQaError, match=r"pb.yaml: playbook standard: it lists STAB.*runs_per_prompt >= 2"):
        load_playbook(pb)
    pb.write_text(yaml.safe_dump({"extends": "standard", "test_matrix": {"temperature": 0.7}}))
    with pytest.raises(AprQaError, match="it lists STAB"):
        load_playbook(pb)
    pb.write_text(yaml.safe_dump({"extends": "smoke", "categories": ["QUAL", "EDGE"]}))
    with pytest.raises(AprQaError, match="it lists EDGE but has no EDGE prompt"):
        load_playbook(pb)
    pb.write_text(yaml.safe_dump({"extends": "smoke", "categories": ["COMP"]}))
    with pytest.raises(AprQaError, match="neither the chat nor the serve modality"):
        load_playbook(pb)
    # listing STAB with the runs it needs is a valid one-run template made repeatable
    pb.write_text(yaml.safe_dump({"extends": "quick", "categories": ["QUAL", "STAB"],
                                  "test_matrix": {"runs_per_prompt": 2}}))
    assert load_playbook(pb)["categories"] == ["QUAL", "STAB"]


def test_plan_carries_each_variant_level_and_the_reference():
    scenarios = plan(load_playbook("mvp"), VARIANTS, reference="/m/st")
    levels = {s.variant: s.level for s in scenarios}
    assert levels == {"st": "source", "gguf": "source", "q8": "q8_0"}
    assert {s.reference for s in scenarios} == {"/m/st"}
