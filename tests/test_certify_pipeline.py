"""End to end on a tiny model: `apr-qa certify` -> evidence.json -> score, models.csv, README table,
JUnit XML, Markdown and HTML reports, Pareto plot. The tiny model has random weights, so its
outputs are garbage: G4 must block it."""

from __future__ import annotations

import base64
import csv
import json
import xml.etree.ElementTree as ET

import pytest
import yaml

from apr_qa.certify.registry import COLUMNS, END, START
from apr_qa.cli import main
from apr_qa.errors import AprQaError


@pytest.fixture(scope="module")
def certified(tiny_llama, tmp_path_factory):
    from apr_qa.convert import convert

    d = tmp_path_factory.mktemp("certify")
    convert(tiny_llama, d / "tiny-f32.apr", "f32")
    pb = d / "tiny.playbook.yaml"
    pb.write_text(yaml.safe_dump({
        "extends": "smoke", "name": "tiny-smoke", "failure_policy": "collect-all",
        "categories": ["QUAL", "PERF", "STAB", "COMP", "EDGE", "REGR"],  # each measurable by this matrix
        "variants": {"formats": ["apr", "safetensors"], "quantizations": ["f32"], "max_variants": None},
        "test_matrix": {"modalities": ["run", "serve"], "runs_per_prompt": 2, "max_new_tokens": 6},
        "prompts": [{"id": "capital", "input": "The capital of France is", "expected_pattern": "Paris",
                     "category": "QUAL"},
                    {"id": "edge-empty", "input": "", "category": "EDGE"}]}))
    out = d / "tiny" / "evidence.json"
    rc = main(["certify", "--model-id", "test/tiny-llama", "--family", "llama", "--playbook", str(pb),
               "--variant", f"f32={d / 'tiny-f32.apr'}", "--variant", f"st={tiny_llama}", "--output", str(out)])
    return d, out, rc


def test_certify_evidence(certified):
    d, out, rc = certified
    assert rc == 1  # tier not passed
    data = json.loads(out.read_text())
    assert data["stage"] == "certify" and data["subject"] == "test/tiny-llama" and data["tier"] == "smoke"
    assert data["host"]["cpus"] and data["stack"]["apr_qa"] and data["stack"]["torch"]
    ids = [g["id"] for g in data["gates"]]
    assert ids.count("G0") == 2 and {"G1", "G2", "G3", "G4"} <= set(ids)
    mqs = data["mqs"]
    assert not next(g for g in mqs["gateways"] if g["id"] == "G4")["passed"]
    assert (mqs["raw"], mqs["status"], mqs["grade"]) == (0, "BLOCKED", "F")
    scen = [g for g in data["gates"] if "scenario" in g["details"]]
    # 2 variants x cpu x (run, serve) x 2 prompts x 2 runs
    assert len(scen) == 16
    sample = next(g for g in scen if g["details"]["scenario"]["modality"] == "run" and g["details"].get("output"))
    assert {"outcome", "reason", "output_excerpt", "metrics", "category", "stage", "format"} <= set(sample["details"])
    assert sample["details"]["metrics"]["tokens"] > 0
    # the server's greedy answer equals the run modality's, per variant
    parity = [g for g in data["gates"] if g["id"].startswith("COMP:serve-parity:")]
    assert len(parity) == 2 and all(g["passed"] for g in parity)
    # greedy reruns agree (STAB, listed with 2 runs per prompt); the safetensors variant's first token
    # agrees with the reference (f32 .apr)
    stab = [g for g in data["gates"] if g["id"].startswith("STAB:determinism:")]
    # 2 variants x the run modality x capital (the refused empty edge prompt has no output to compare)
    assert len(stab) == 2 and all(g["passed"] for g in stab)
    assert data["categories"] == ["QUAL", "PERF", "STAB", "COMP", "EDGE", "REGR"]
    assert mqs["not_measured"] == [] and mqs["categories"]["STAB"]["total"] == len(stab)
    regr = [g for g in data["gates"] if g["id"].startswith("REGR:first-token:")]
    assert len(regr) == 1 and regr[0]["passed"]
    # every failure carries a Five Whys chain
    failed = [g for g in data["gates"] if not g["passed"] and g["details"].get("outcome") != "skip"]
    assert failed and all(g["details"]["five_whys"]["whys"] for g in failed)


def test_score_command(certified, capsys):
    _, out, _ = certified
    assert main(["score", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MQS 0/1000" in text and "G4 FAIL" in text and "BLOCKED" in text
    assert main(["score", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "BLOCKED"


def test_export_csv_and_sync_readme(certified, tmp_path):
    d, out, _ = certified
    registry = tmp_path / "models.csv"
    with open(registry, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerow({c: "" for c in COLUMNS} | {"model_id": "aaa/other", "status": "PENDING"})
    assert main(["export-csv", "--evidence-dir", str(d), "--output", str(registry)]) == 0
    with open(registry, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS and len(COLUMNS) == 21
        rows = {r["model_id"]: r for r in reader}
    assert rows["aaa/other"]["status"] == "PENDING"  # other models are kept
    row = rows["test/tiny-llama"]
    assert (row["status"], row["mqs_score"], row["grade"], row["certified_tier"]) == ("BLOCKED", "0", "F", "none")
    assert (row["g1"], row["g3"], row["g4"]) == ("true", "true", "false")
    assert row["family"] == "llama" and row["size_category"] == "tiny" and int(row["parameters"]) > 0
    assert float(row["tps_apr_cpu"]) > 0 and float(row["tps_st_cpu"]) > 0 and row["tps_gguf_cpu"] == ""
    assert row["provenance_verified"] == "false"  # no D4 evidence was given

    readme = tmp_path / "README.md"
    readme.write_text(f"# Models\n\nintro\n\n{START}\nold table\n{END}\n\nfooter\n")
    assert main(["sync-readme", str(readme), "--csv", str(registry)]) == 0
    first = readme.read_text()
    assert "old table" not in first and "test/tiny-llama" in first and "| BLOCKED" in first
    assert first.startswith("# Models\n\nintro\n\n") and first.endswith(f"{END}\n\nfooter\n")
    assert main(["sync-readme", str(readme), "--csv", str(registry)]) == 0
    assert readme.read_text() == first  # idempotent
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# nothing here\n")
    with pytest.raises(AprQaError, match="plain.md: certification table markers"):
        from apr_qa.certify.registry import sync_readme
        sync_readme(no_markers, registry)
    assert main(["sync-readme", str(no_markers), "--csv", str(registry)]) == 2
    assert no_markers.read_text() == "# nothing here\n"


def test_junit_from_certify(certified, tmp_path):
    _, out, _ = certified
    xml_path = tmp_path / "junit.xml"
    assert main(["junit", str(out), "--output", str(xml_path)]) == 0
    root = ET.parse(xml_path).getroot()
    data = json.loads(out.read_text())
    cases = root.findall(".//testcase")
    assert len(cases) == len(data["gates"]) == int(root.get("tests"))
    n_fail = sum(1 for g in data["gates"] if not g["passed"] and g["level"] != "warn"
                 and g["details"].get("outcome", "fail") == "fail")
    n_skip = sum(1 for g in data["gates"] if g["details"].get("outcome") == "skip")
    assert int(root.get("failures")) == len(root.findall(".//failure")) == n_fail
    assert int(root.get("skipped")) == len(root.findall(".//skipped")) == n_skip
    g4 = next(c for c in cases if c.get("name").startswith("G4 "))
    assert g4.find("failure").get("message").startswith("G4: measured 1.0, threshold 0.25")


def test_reports_and_pareto(certified, tmp_path):
    _, out, _ = certified
    png, html_path, md = tmp_path / "pareto.png", tmp_path / "report.html", tmp_path / "report.md"
    assert main(["certify-report", str(out), "--html", str(html_path), "--markdown", str(md),
                 "--pareto-png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html_path.read_text()
    assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()[:40] in page
    assert "<script src" not in page  # the only script is inline (table sorting)
    text = md.read_text()
    assert "### Gateways" in text and "| G4" in text and "### Failures and their Five Whys" in text
    assert "### Pareto frontier" in text
    rows_json = tmp_path / "pareto.json"
    assert main(["pareto", str(out), "--json", str(rows_json), "--svg", str(tmp_path / "p.svg")]) == 0
    rows = json.loads(rows_json.read_text())
    assert {r["name"] for r in rows} == {"f32", "st"}
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")


def test_untested_categories_show_as_not_measured(certified, tmp_path, capsys):
    """A smoke-like certification tests QUAL and PERF only: the others are "not measured" wherever the
    MQS categories are shown, never full marks."""
    from apr_qa.report.evidence import certification_blocks
    from apr_qa.certify.mqs import score
    from apr_qa.certify.pipeline import load_records
    from apr_qa.evidence import write_evidence
    from apr_qa.report.board import _certification_blocks

    _, out, _ = certified
    ctx, records = load_records(out)
    kept = [r for r in records if r.id.startswith(("QUAL:", "PERF:"))]
    result = score(kept)
    assert result.not_measured == ["STAB", "COMP", "EDGE", "REGR"]
    smoke = tmp_path / "smoke.json"
    write_evidence(smoke, kept, **{**ctx, "mqs": result.to_dict()})
    assert main(["score", str(smoke)]) == 0
    printed = capsys.readouterr().out
    assert "EDGE not measured" in printed and "STAB not measured" in printed and "EDGE 150/150" not in printed
    ctx, kept = load_records(smoke)
    table = next(b for b in certification_blocks(ctx, kept) if b[0] == "table" and b[1][0] == "category")
    shown = {row[0]: row[2] for row in table[2]}
    assert shown["EDGE"] == shown["STAB"] == "not measured" and shown["QUAL"] != "not measured"
    report = _certification_blocks(tmp_path, ["tiny"], {"tiny": (ctx, kept)}, tmp_path)
    row = next(b for b in report if b[0] == "table")[2][0]
    assert "EDGE not measured" in " ".join(map(str, row)) and "QUAL 0/200" in " ".join(map(str, row))


def _green_row(variant: str) -> dict:
    from apr_qa.layout import STAGES

    return {"model": "tiny", "variant": variant, "status": "CERTIFIED",
            "stages": {s: {"colour": "green", "gates": []} for s in STAGES}, "_eval": {}, "_size": None}


def test_board_shows_the_model_certification(certified, tmp_path):
    """Every stage gate of the variant passed, but the model's certification is BLOCKED (G4, garbage
    answers): the board says BLOCKED, counts the variant's failed scenarios and names them."""
    from apr_qa.certify.mqs import score
    from apr_qa.certify.pipeline import load_records
    from apr_qa.evidence import Evidence
    from apr_qa.report.sections import (board_blocks, board_status, certification_view, detail_blocks,
                                                 headline, tone)

    _, out, _ = certified
    ctx, records = load_records(out)
    row = _green_row("f32")
    row["_certification"] = certification_view(ctx, records, "f32")
    failed = row["_certification"]["failed_scenarios"]
    assert failed and all(f["id"].split(":", 1)[1].startswith("f32/") for f in failed)
    assert board_status(row) == "BLOCKED" and tone(row) == "red" and "G4" in headline(row)
    (_, (_, _, tiles, _)), _ = board_blocks([row], ["tiny"], ["f32"])
    tile = tiles[0][1]
    assert tile.text == f"BLOCKED · {len(failed)} failed" and tile.tone == "red"
    assert tile.href == "#variant-tiny-f32" and failed[0]["id"] in tile.title
    details = detail_blocks(tmp_path, [row], tmp_path)[-1]
    assert details[3] == "variant-tiny-f32"
    listed = next(b for b in details[2] if b[0] == "table" and b[1][0] == "scenario")
    assert [r[0] for r in listed[2]] == [f["id"] for f in failed]

    # PROVISIONAL: never CERTIFIED on the board either
    scenario = {"scenario": {"variant": "f32"}}
    recs = ([Evidence("QUAL:a", "t", True, 1, 1, "fail", "", {**scenario, "category": "QUAL", "outcome": "pass"})] * 3
            + [Evidence("QUAL:b", "t", False, 0, 1, "fail", "", {**scenario, "category": "QUAL", "outcome": "fail"})]
            + [Evidence("EDGE:a", "t", True, 1, 1, "fail", "", {**scenario, "category": "EDGE", "outcome": "pass"}),
               Evidence("EDGE:b", "t", False, 0, 1, "fail", "", {**scenario, "category": "EDGE", "outcome": "fail"}),
               Evidence("PERF:x", "t", True, 1, 1, "warn", "", {"category": "PERF"})])
    mqs = score(recs).to_dict()
    assert mqs["status"] == "PROVISIONAL"  # (150 + 75 + 150) x 1000 / 500 = 750
    row = _green_row("f32")
    row["_certification"] = certification_view({"mqs": mqs, "tier": "quick"}, recs, "f32")
    (_, (_, _, tiles, _)), _ = board_blocks([row], ["tiny"], ["f32"])
    assert tiles[0][1].text == "PROVISIONAL · 2 failed" and tiles[0][1].tone == "yellow"
    # without a certification (tier null) the stage gates alone speak
    (_, (_, _, tiles, _)), _ = board_blocks([_green_row("f32")], ["tiny"], ["f32"])
    assert tiles[0][1].text == "PASS" and tiles[0][1].tone == "green"
