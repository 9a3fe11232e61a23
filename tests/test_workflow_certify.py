"""The certification stage through real Snakemake runs: a smoke-tier run on a tiny random model.

The tier decides the DAG (one variant for smoke, more for the others), the model gets one
certification (`apr-qa certify`: scenarios, G0-G4, MQS), and the report rule writes models.csv,
junit.xml, report.md/.html and the Pareto plot. The tiny model's weights are random, so its answers
are garbage: G4 fails and the certification is BLOCKED. A forced gate failure then shows that a
model whose variant the gates blocked still gets a (BLOCKED) certification with the gate's Five Whys.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import yaml

from apr_qa.certify.playbooks import TIERS, load_playbook
from apr_qa.certify.registry import COLUMNS
from apr_qa.errors import AprQaError
from apr_qa.gate_catalogue import gateway_of
from apr_qa.workflow.tiers import tier_variants
from test_workflow_snakemake import BIN, PROMPTS, ROOT, _env, executed, nothing_to_do
from workflow_ws import TEST_CORPUS

MODEL, REPO = "tiny-llama", "test/tiny-llama"
SITE_VARIANTS = ["f16", "q8_0", "q4_0", "q4_k"]
TOLERANCES = "tolerances: {Q4_0: {kl: 0.5, cosine: 0.95, rrmse: 0.3}, Q4_K: {kl: 0.5, cosine: 0.95, rrmse: 0.3}}\n"


def test_tier_variants_follow_the_playbooks():
    built = {t: tier_variants(load_playbook(t), SITE_VARIANTS) for t in TIERS}
    assert built == {"smoke": ["q8_0"], "mvp": ["q8_0"], "quick": ["f16", "q8_0", "q4_0", "q4_k"],
                     "standard": ["f16", "q8_0", "q4_0"], "deep": ["f16", "q8_0", "q4_0", "q4_k"]}
    with pytest.raises(AprQaError, match="none of the variants"):
        tier_variants(load_playbook("smoke"), ["f16"], "m")


def test_stage_gates_map_to_gateways():
    gates = ("D4", "C5", "C8", "I-4", "T1", "T4", "X9")
    assert [gateway_of(g) for g in gates] == ["G1", "G1", "G0", "G0", "G2", "G4", "G3"]


# ---- real Snakemake runs ----------------------------------------------------------------------



def snakemake(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(_env(ws), OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([str(BIN / "snakemake"), "--cores", "2", *args], cwd=ws, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama) -> Path:
    from apr_qa.hub.mirror import HubMirror

    root = tmp_path_factory.mktemp("hub")
    with HubMirror({REPO: tiny_llama}) as hub:
        env = dict(_env(root), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(root / "cache"))
        subprocess.run([str(BIN / "apr-qa"), "download", REPO, "--manifest", str(root / "m.json")],
                       env=env, check=True, capture_output=True)
    return root / "cache"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hub_cache) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    for name in ("Snakefile", "rules", "envs", "profiles"):
        (ws / name).symlink_to(ROOT / name)
    (ws / "config/prompts").mkdir(parents=True)
    shutil.copy(ROOT / "config/schema.yaml", ws / "config/schema.yaml")
    shutil.copytree(ROOT / "config/playbooks", ws / "config/playbooks")
    (ws / "config/prompts/test.yaml").write_text(PROMPTS % "(?s).*")
    (ws / "config/tolerances.yaml").write_text(TOLERANCES)
    shutil.copytree(ROOT / "src/apr_qa", ws / "src/apr_qa", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = {
        "tier": "quick",  # the run below overrides it with --config tier=smoke
        "checksum_cache": "results/.checksums",
        "hub": {"cache_dir": str(hub_cache), "offline": True, "endpoint": None},
        "download": {"max_size_gb": 10, "retries": 1}, "variants": SITE_VARIANTS,
        "validation": {"tolerances": "config/tolerances.yaml"},
        "corpus": TEST_CORPUS,
        "evaluation": {"prompts": "config/prompts/test.yaml", "device": "cpu", "threads": 1,
                       "extra_args": "--max-new-tokens 2"},
        "models": [{"id": MODEL, "repo": REPO, "family": "llama"}],
    }
    (ws / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    return ws


@pytest.fixture(scope="module")
def built(workspace) -> subprocess.CompletedProcess:
    proc = snakemake(workspace, "-p", "results/report.md", "--config", "tier=smoke")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def _evidence(ws: Path) -> dict:
    return json.loads((ws / f"results/certify/{MODEL}/evidence.json").read_text())


@pytest.mark.slow
def test_smoke_dag_has_one_variant_and_one_certification(workspace, built):
    mv = f"{MODEL}/q8_0"
    assert executed(built) == {("download", MODEL), ("golden_reference", MODEL),
                               ("convert", mv), ("validate", mv), ("gate-validate", mv),
                               ("evaluate", mv), ("gate-evaluate", mv), ("summarize", mv),
                               ("certify", MODEL), ("report", "")}
    # the tier's runs per prompt and timeout reach `apr-qa eval` (extra_args come last and win)
    assert "--runs 1 " in built.stderr and "--timeout 60 --max-new-tokens 2" in built.stderr
    assert nothing_to_do(workspace, "results/report.md", "--config", "tier=smoke")


@pytest.mark.slow
def test_tier_decides_the_dag(tmp_path, workspace, built):
    """Dry runs of each tier, from the downloaded model only, plan exactly its variants' conversions."""
    for name in ("Snakefile", "rules", "envs", "profiles", "config", "src"):
        (tmp_path / name).symlink_to(workspace / name)
    shutil.copytree(workspace / "results/download", tmp_path / "results/download")
    for tier in TIERS:
        proc = snakemake(tmp_path, "-n", "--config", f"tier={tier}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        plan = subprocess.CompletedProcess(proc.args, 0, "", proc.stdout + proc.stderr)  # dry runs list on stdout
        planned = [mv.split("/")[1] for rule, mv in executed(plan) if rule == "convert"]
        assert sorted(planned) == sorted(tier_variants(load_playbook(tier), SITE_VARIANTS)), tier


@pytest.mark.slow
def test_certification_evidence(workspace, built):
    data = _evidence(workspace)
    assert (data["stage"], data["subject"], data["tier"]) == ("certify", REPO, "smoke")
    assert [v["name"] for v in data["variants"]] == ["q8_0"]
    ids = [g["id"] for g in data["gates"]]
    assert {"G0", "G1", "G2", "G3", "G4", "D4", "T1", "T4"} <= set(ids)
    scenarios = [g for g in data["gates"] if "scenario" in g["details"]]
    assert len(scenarios) == len(load_playbook("smoke")["prompts"])  # 1 variant x cpu x run x prompts x 1 run
    mqs = data["mqs"]
    g4 = next(g for g in mqs["gateways"] if g["id"] == "G4")
    assert not g4["passed"] and (mqs["raw"], mqs["status"], mqs["grade"]) == (0, "BLOCKED", "F")


@pytest.mark.slow
def test_registry_junit_and_reports(workspace, built):
    data = _evidence(workspace)
    with open(workspace / "results/models.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS and len(COLUMNS) == 21
    assert len(rows) == 1 and rows[0]["model_id"] == REPO and rows[0]["status"] == "BLOCKED"
    assert rows[0]["certified_tier"] == "none" and rows[0]["g4"] == "false" and rows[0]["provenance_verified"] == "true"

    root = ET.parse(workspace / "results/junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == len(data["gates"])  # one testcase per gate/scenario record
    failed = {c.get("name").split()[0] for c in cases if c.find("failure") is not None or c.find("error") is not None}
    assert "G4" in failed and int(root.get("failures")) >= 1

    report = (workspace / "results/report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith(f"| {MODEL} ") and "smoke" in line)
    assert "BLOCKED" in row and "FAIL" in row and "G4:" in row  # the garbage reason
    assert "## Pareto frontier" in report and "![Pareto frontier](pareto.png)" in report
    assert "## Failures and their Five Whys" in report and "why 1: G4" in report and "root cause:" in report
    for name in ("pareto.png", "pareto.svg"):
        assert (workspace / "results" / name).stat().st_size > 0
    assert (workspace / "results/pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (workspace / "results/report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/svg+xml;base64," in page and "BLOCKED" in page


@pytest.mark.slow
def test_snakemake_report_shows_the_artifacts(workspace, built, tmp_path):
    """`snakemake --report` collects the report rule's flagged outputs with their captions."""
    proc = snakemake(workspace, "--report", str(tmp_path / "report.zip"), "--config", "tier=smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        names = {Path(n).name for n in z.namelist() if "/data/" in n}
        page = z.read(next(n for n in z.namelist() if n.endswith("/report.html") and "/data/" not in n)).decode()
    assert names == {"report.html", "report.md", "pareto.png", "kld.png", "latency.png", "corpus_kld.png",
                     "models.csv", "junit.xml"}
    for caption in (ROOT / "rules/captions").glob("*.rst"):
        assert " ".join(caption.read_text().split()[:4]) in page, caption.name


@pytest.mark.slow
def test_report_page_in_headless_chromium(workspace, built, tmp_path):
    """The workflow's report.html loads without console errors; its board tile links to the details."""
    from browser import visit

    shot = tmp_path / "report.png"
    seen = visit(workspace / "results/report.html", shot,
                 lambda page: page.locator("table.board td a").first.get_attribute("href"))
    print(f"screenshot: {shot}")
    assert seen.errors == [] and [m for m in seen.console if m[0] in ("error", "warning")] == []
    assert seen.result == f"#variant-{MODEL}-q8-0"
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000


@pytest.mark.slow
def test_blocked_variant_still_certified(workspace, built):
    """An impossible sanity pattern trips T4 on the only variant: the run fails, and the onerror
    handler certifies the model BLOCKED from its stage evidence, T4's Five Whys leading G4's."""
    prompts = workspace / "config/prompts/test.yaml"
    prompts.write_text(PROMPTS % "^never matches$")
    try:
        proc = snakemake(workspace, "results/report.md", "--config", "tier=smoke")
        assert proc.returncode != 0 and "gate T4" in proc.stderr
        data = _evidence(workspace)
        assert data["blocked"] == [{"variant": "q8_0", "stage": "evaluate", "gate": "T4", "level": "fail",
                                    "reason": data["blocked"][0]["reason"]}]
        assert data["mqs"]["status"] == "BLOCKED" and data["tier"] == "smoke"
        g4 = next(g for g in data["gates"] if g["id"] == "G4" and g["details"].get("workflow"))
        assert "T4" in g4["message"] and g4["details"]["five_whys"]["whys"][1].startswith("T4 ")
        report = (workspace / "results/report.md").read_text()
        row = next(line for line in report.splitlines() if line.startswith(f"| {MODEL} ") and "smoke" in line)
        assert "BLOCKED" in row and "T4" in row
        root = ET.parse(workspace / "results/junit.xml").getroot()
        assert any(c.get("name").startswith("T4 ") and c.find("failure") is not None for c in root.iter("testcase"))
    finally:
        prompts.write_text(PROMPTS % "(?s).*")
    proc = snakemake(workspace, "results/report.md", "--config", "tier=smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "blocked" not in _evidence(workspace) and ("certify", MODEL) in executed(proc)
