"""Stacks in the workflow (slow): a tiny llama certified on builtin and on a command stack (the
contract's reference implementation) in one Snakemake run, with the differential record per variant,
the report's stacks section, and, with a tier, the stack's own certification (rule certify_stack)
beside builtin's in the report, models.csv and junit.xml; editing the command's script reruns only
that stack's evaluations, their comparisons, its certification and what reads them, never builtin's
evaluation or certification."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET

import pytest
import stack_reference
from workflow_ws import MODEL, REPO, ROOT, VARIANTS, frozen_src, hub_cache, snakemake, workspace

pytestmark = [pytest.mark.slow]

# The workspace's own "quick" tier: both variants, one QUAL and one EDGE prompt (a fast certification).
PLAYBOOK = """\
name: quick
tier: quick
description: the stacks test's tier
categories: [QUAL, PERF, EDGE, REGR]
variants: {formats: [apr], quantizations: [f16, q8_0], max_variants: null}
test_matrix: {backends: [cpu], modalities: [run], runs_per_prompt: 1, max_new_tokens: 4, temperature: 0.0, seed: 42}
prompts:
  - {id: capital, input: "The capital of France is", expected_pattern: "Paris", category: QUAL}
  - {id: edge-unicode, input: "ünïcödé 🙂", category: EDGE}
timeouts: {scenario_s: 60, load_s: 300, kill_grace_s: 30}
thresholds: {mqs_pass: 700, min_tokens_per_s: 0.5}
failure_policy: collect-all
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("stacks-wf")
    ws = workspace(root / "ws", hub_cache(root, tiny_llama), frozen_src(root))
    script = ws / "runtime.py"  # the command's script, inside the workspace so the test can edit it
    shutil.copy(stack_reference.__file__, script)
    cfg = json.loads((ws / "config/config.yaml").read_text())
    cfg["stacks"] = ["builtin", {"name": "ref", "kind": "command", "argv": [sys.executable, str(script)]}]
    cfg["tier"], cfg["failure_policy"] = "quick", "collect-all"
    for folder in (ws, root):  # the workflow's tier, and the frozen package's templates (its schema) beside it
        (folder / "config/playbooks").mkdir(parents=True)
        (folder / "config/playbooks/quick.yaml").write_text(PLAYBOOK)
        shutil.copy(ROOT / "config/playbooks/schema.yaml", folder / "config/playbooks/schema.yaml")
    (ws / "config/config.yaml").write_text(json.dumps(cfg, indent=1))
    proc = snakemake(ws, "results/report.md")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ws, script


def test_every_variant_is_evaluated_and_compared_on_each_stack(built):
    ws, _ = built
    for variant in VARIANTS:
        ev = json.loads((ws / f"results/stacks/{MODEL}/{variant}/ref.json").read_text())
        assert ev["stack"]["name"] == "ref" and ev["stack"]["fingerprint"].startswith("ref:")
        diff = json.loads((ws / f"results/differential/{MODEL}/{variant}/ref.json").read_text())
        assert diff["kl_divergence"]["kld"]["max"] == 0.0 and diff["gates"][0]["passed"]  # same runtime
        builtin = json.loads((ws / f"results/evaluate/{MODEL}/{variant}.json").read_text())
        assert builtin["stack"]["name"] == "builtin" and builtin["stack"]["logits"]["positions"] > 0
    report = (ws / "results/report.md").read_text()
    assert "## Stacks (differential certification)" in report
    section = report[report.index("## Stacks (differential certification)"):]
    rows = [line for line in section.splitlines() if line.startswith(f"| {MODEL} ") and "| builtin " in line]
    assert len(rows) == len(VARIANTS)  # one builtin row per variant, named by the workflow's model id


def test_each_stack_is_certified_beside_builtin(built):
    """The stack's certification: the same playbook's scenarios on the stack, the artifact's evidence
    (download, validation) and the stack's own evaluations, never builtin's."""
    ws, _ = built
    results = ws / "results"
    builtin = json.loads((results / f"certify/{MODEL}/evidence.json").read_text())
    ref = json.loads((results / f"certify/{MODEL}/stacks/ref.json").read_text())
    assert builtin["certified_stack"]["name"] == "builtin"
    assert ref["certified_stack"]["name"] == "ref" and ref["certified_stack"]["fingerprint"].startswith("ref:")
    assert [v["name"] for v in ref["variants"]] == VARIANTS and ref["tier"] == builtin["tier"] == "quick"
    scenarios = {g["id"] for g in ref["gates"] if "scenario" in g["details"]}
    assert scenarios == {g["id"] for g in builtin["gates"] if "scenario" in g["details"]} and scenarios
    files = {g["details"].get("evidence_file") for g in ref["gates"]} - {None}
    assert {f"results/stacks/{MODEL}/{v}/ref.json" for v in VARIANTS} <= files  # its own evaluations
    assert {f"results/validate/{MODEL}/{v}.json" for v in VARIANTS} <= files  # the artifact's, shared
    assert not any("/evaluate/" in f for f in files)  # builtin's evaluations are builtin's evidence
    # the tiny model's random weights answer garbage on both stacks alike: G4 blocks both
    for cert in (builtin, ref):
        assert cert["mqs"]["status"] == "BLOCKED"
        assert not next(g for g in cert["mqs"]["gateways"] if g["id"] == "G4")["passed"]

    with open(results / "models.csv", newline="") as f:
        rows = {(r["model_id"], r["stack"]): r for r in csv.DictReader(f)}
    assert rows.keys() == {(REPO, "builtin"), (REPO, "ref")} and rows[(REPO, "ref")]["g4"] == "false"
    suites = {s.get("name") for s in ET.parse(results / "junit.xml").getroot().iter("testsuite")}
    assert {REPO, f"{REPO} on ref"} <= suites
    report = (results / "report.md").read_text()
    table = report[report.index("## Certification"):]
    rows_md = [line for line in table.splitlines() if line.startswith(f"| {MODEL} ") and "| quick " in line]
    assert [line.split("|")[3].strip() for line in rows_md] == ["builtin", "ref"]  # the stack beside builtin
    assert all("BLOCKED" in line and "FAIL" in line for line in rows_md)
    assert f"{MODEL} ({REPO}) on stack ref:" in report  # its Five Whys


def test_a_new_command_binary_reruns_only_its_stack(built):
    ws, script = built
    script.write_text(script.read_text() + "\n# a new release of the runtime\n")
    plan = snakemake(ws, "-n", "results/report.md")
    assert plan.returncode == 0, plan.stderr[-2000:]
    jobs = {m.group(1) for line in (plan.stdout + plan.stderr).splitlines()
            if (m := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line.strip()))}
    assert {"evaluate_stack", "diff_stacks", "certify_stack", "report"} <= jobs
    assert not jobs & {"evaluate", "certify", "convert", "validate", "download"}, jobs
