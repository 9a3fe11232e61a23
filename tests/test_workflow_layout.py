"""One source of truth: the layout, the variants, the gate catalogue and the files generated from
them, checked against the modules and files that use them."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from apr_qa import layout
from apr_qa.certify.mqs import GATEWAYS, category_of
from apr_qa.dtypes import QUANT_LEVELS
from apr_qa.evidence import Evidence
from apr_qa.fsutil import sha256_file
from apr_qa.gate_catalogue import CATALOGUE_STAGES, GATE_ID, GATES, LEVELS, gate, gateway_of
from apr_qa.validate import GATE_LEVELS, GATE_NAMES
from apr_qa.workflow import generated
from apr_qa.workflow.summary import summarize

ROOT = Path(__file__).resolve().parents[1]
APR_QA = [str(Path(sys.executable).parent / "apr-qa")]


def test_generated_files_are_current():
    """docs/gates.md and the schemas' variant enums equal what the registries give."""
    assert generated.stale(ROOT) == [], "run `apr-qa sync-generated`"
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    assert schema["definitions"]["variant"]["enum"] == list(QUANT_LEVELS)
    playbook = yaml.safe_load((ROOT / "config/playbooks/schema.yaml").read_text())
    assert playbook["properties"]["variants"]["properties"]["quantizations"]["items"]["enum"] == list(QUANT_LEVELS)


def test_sync_generated_rewrites_a_stale_file(tmp_path):
    for rel in generated.SCHEMAS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text().replace(", q8_0", ""))
    check = subprocess.run([*APR_QA, "sync-generated", "--root", str(tmp_path), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "config/schema.yaml: out of date" in check.stderr
    assert subprocess.run([*APR_QA, "sync-generated", "--root", str(tmp_path)], capture_output=True).returncode == 0
    assert generated.stale(tmp_path) == []
    assert (tmp_path / "docs/gates.md").read_text() == (ROOT / "docs/gates.md").read_text()
    (tmp_path / generated.SCHEMAS[0]).write_text("definitions: {}\n")
    bad = subprocess.run([*APR_QA, "sync-generated", "--root", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "config/schema.yaml" in bad.stderr


def test_every_variant_passes_the_config_schema_and_the_wildcard():
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    config = {"evaluation": {"prompts": "p.yaml"}, "models": [{"id": "m", "repo": "o/m"}]}
    for v in QUANT_LEVELS:
        jsonschema.validate({**config, "variants": [v]}, schema)
        assert re.fullmatch(layout.variant_pattern(), v)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "variants": ["q3_x"]}, schema)
    assert not re.fullmatch(layout.variant_pattern(), "q3_x")
    # the rules name no variant, artifact path or stage list of their own
    rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    assert "q4_0" not in rules and '"results/' not in rules and "/manifest.json" not in rules


def test_gate_catalogue_agrees_with_the_code():
    """The catalogue is the table the modules that check and score gates must agree with."""
    ids = [g.id for g in GATES]
    assert len(ids) == len(set(ids))
    for g in GATES:
        assert g.stage in CATALOGUE_STAGES and g.threshold and g.measures
        assert g.level in LEVELS or g.level.startswith(LEVELS), g
        assert GATE_ID.fullmatch(g.id)
        if g.stage == "certify":
            assert g.id in GATEWAYS and g.category is None
        else:
            assert g.gateway is None or g.gateway in GATEWAYS
            assert category_of(Evidence(g.id, "", False, None, None, "fail")) == g.category, g
    for gid, level in GATE_LEVELS.items():  # validate's own level table
        assert gate(gid).stage == "validate" and gate(gid).level == level and gid in GATE_NAMES
    assert [gateway_of(g) for g in ("D4", "C0", "C5", "C8", "I-4", "T1", "T4", "T2", "X9")] == \
        ["G1", "G1", "G1", "G0", "G0", "G2", "G4", "G3", "G3"]


def test_every_gate_the_code_names_is_catalogued():
    """A gate id anywhere in the package's code (an evidence record, a level table) has its entry."""
    shape = re.compile(r"(?:[CDGTV]\d+|I-\d+)")
    named = {}
    for file in sorted((ROOT / "src/apr_qa").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and shape.fullmatch(node.value):
                named.setdefault(node.value, file.relative_to(ROOT).as_posix())
    missing = {gid: where for gid, where in named.items() if gid not in {g.id for g in GATES}}
    assert not missing, f"add these gates to src/apr_qa/gate_catalogue.py: {missing}"


def test_summary_reads_exactly_the_files_it_is_given(tmp_path):
    """`apr-qa summarize` takes every file explicitly: a skipped download, then a missing record."""
    files = layout.variant_files(tmp_path / "results", "m", "f16")
    files["manifest"].parent.mkdir(parents=True)
    files["manifest"].write_text(json.dumps({"status": "skipped", "skip_reason": "D2: no weights", "gates": []}))
    out = tmp_path / "summary.json"
    args = [f"--{k.replace('_', '-')}={files[k]}" for k in
            ("manifest", "apr", "apr_record", "conversion", "validation", "evaluation")]
    proc = subprocess.run([*APR_QA, "summarize", "--model", "m", "--variant", "f16", *args, "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["status"] == "SKIPPED"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    files["manifest"].write_text(json.dumps({"status": "ok", "gates": [], "files": [
        {"path": str(weights), "size": 7, "sha256": sha256_file(weights)}]}))
    files["conversion"].parent.mkdir(parents=True)
    files["conversion"].write_text(json.dumps({"gates": [], "seconds": 1.0}))
    summary = summarize(files, "m", "f16")
    assert summary["status"] == "PENDING" and summary["stage"] == "convert"
    assert summary["reason"] == f"{files['apr']} is missing"
