"""Stacks in the workflow (slow): a tiny llama certified on builtin and on a command stack (the
contract's reference implementation) in one Snakemake run, with the differential record per variant
and the report's stacks section; editing the command's script reruns only that stack's evaluations,
their comparisons and what reads them, never builtin's evaluation."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import stack_reference
from workflow_ws import MODEL, VARIANTS, frozen_src, hub_cache, snakemake, workspace

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("stacks-wf")
    ws = workspace(root / "ws", hub_cache(root, tiny_llama), frozen_src(root))
    script = ws / "runtime.py"  # the command's script, inside the workspace so the test can edit it
    shutil.copy(stack_reference.__file__, script)
    cfg = json.loads((ws / "config/config.yaml").read_text())
    cfg["stacks"] = ["builtin", {"name": "ref", "kind": "command", "argv": [sys.executable, str(script)]}]
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
    rows = [line for line in report.splitlines() if line.startswith(f"| {MODEL} ") and "| builtin " in line]
    assert len(rows) == len(VARIANTS)  # one builtin row per variant, named by the workflow's model id


def test_a_new_command_binary_reruns_only_its_stack(built):
    ws, script = built
    script.write_text(script.read_text() + "\n# a new release of the runtime\n")
    plan = snakemake(ws, "-n", "results/report.md")
    assert plan.returncode == 0, plan.stderr[-2000:]
    jobs = {m.group(1) for line in (plan.stdout + plan.stderr).splitlines()
            if (m := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line.strip()))}
    assert {"evaluate_stack", "diff_stacks", "report"} <= jobs
    assert not jobs & {"evaluate", "convert", "validate", "download"}, jobs
