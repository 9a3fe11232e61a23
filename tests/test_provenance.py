"""models.csv's provenance_verified comes from the download gates' recorded outcomes (D3: every file
fetched, D4: every sha256 the hub's). A real download from a local hub (hub_mirror) of the tiny llama's
files, through the workflow's andon cord: verified files give a certification whose row says true; a
file whose bytes differ from the listing fails the job as D4 (halt), and the failure, recorded as
measured, gives the onerror certification a failed D4 record and a row that says false."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apr_qa.certify.playbooks import load_playbook
from apr_qa.certify.registry import export_csv, provenance_verified
from apr_qa.cli import main
from apr_qa.evidence import Evidence
from apr_qa.layout import path
from apr_qa.workflow.blocked import certify_blocked
from apr_qa.hub.mirror import HubMirror

APR_QA = str(Path(sys.executable).parent / "apr-qa")
REPO, MODEL = "org/tiny-llama", "tiny"


@pytest.fixture
def served(tiny_llama, tmp_path) -> Path:
    folder = tmp_path / "repo"
    shutil.copytree(tiny_llama, folder)
    return folder


def download(results: Path, hub: HubMirror) -> subprocess.CompletedProcess:
    """`apr-qa download` under the andon cord, as rules/download.smk runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(results.parent / "cache"), HF_HUB_DISABLE_TELEMETRY="1", HF_ENDPOINT=hub.url)
    return subprocess.run([APR_QA, "andon", "run", "--stage", "download", "--subject", MODEL, "--state",
                           str(path(results, "andon")), "--policy", "collect-all", "--",
                           APR_QA, "download", REPO, "--id", MODEL, "--manifest",
                           str(path(results, "manifest", model=MODEL)), "--backoff", "0.05"],
                          env=env, capture_output=True, text=True)


def registry_row(certification: Path, tmp_path: Path) -> dict[str, str]:
    (row,) = export_csv([certification], tmp_path / "models.csv")
    return row


def test_verified_download_gives_verified_provenance(served, tmp_path):
    results = tmp_path / "results"
    with HubMirror({REPO: served}) as hub:
        proc = download(results, hub)
    assert proc.returncode == 0, proc.stderr
    manifest_path = path(results, "manifest", model=MODEL)
    manifest = json.loads(manifest_path.read_text())
    assert {g["id"]: g["passed"] for g in manifest["gates"]}["D4"] is True
    assert not path(results, "download_failure", model=MODEL).exists()
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(yaml.safe_dump({
        "extends": "smoke", "name": "provenance", "variants": {"formats": ["safetensors"]},
        "test_matrix": {"max_new_tokens": 2},
        "prompts": [{"id": "capital", "input": "The capital of France is", "category": "QUAL"}]}))
    out = tmp_path / "certify" / "evidence.json"
    main(["certify", "--model-id", REPO, "--playbook", str(playbook), "--variant", f"source={manifest['source']}",
          "--evidence", str(manifest_path), "--output", str(out)])
    records = json.loads(out.read_text())["gates"]
    assert {(g["id"], g["passed"]) for g in records if g["id"] in ("D3", "D4")} == {("D3", True), ("D4", True)}
    assert registry_row(out, tmp_path)["provenance_verified"] == "true"


def test_failed_checksum_is_recorded_and_unverifies_provenance(served, tmp_path):
    results = tmp_path / "results"
    with HubMirror({REPO: served}) as hub:
        data = bytearray((served / "model.safetensors").read_bytes())
        data[-1] ^= 0x01  # the served bytes no longer match the listing's sha256
        (served / "model.safetensors").write_bytes(bytes(data))
        proc = download(results, hub)
    # the job fails loudly, as the gate: halt (exit 3), the line stopped, the gate named
    assert proc.returncode == 3 and "gate failed: D4 checksum mismatch" in proc.stderr
    assert (path(results, "andon") / "STOP").exists()
    assert not path(results, "manifest", model=MODEL).exists()
    failed = json.loads(path(results, "download_failure", model=MODEL).read_text())
    d4 = next(g for g in failed["gates"] if g["id"] == "D4")
    assert not d4["passed"] and [m["name"] for m in d4["details"]["mismatches"]] == ["model.safetensors"]

    # the failed run's certification (the Snakefile's onerror handler) holds the failed D4 record
    out = path(results, "certification", model=MODEL)
    mqs = certify_blocked(results, MODEL, REPO, load_playbook("smoke"), ["q8_0"], out)
    assert mqs is not None and mqs["status"] == "BLOCKED"
    evidence = json.loads(out.read_text())
    recorded = [g for g in evidence["gates"] if g["id"] == "D4"]
    assert len(recorded) == 1 and not recorded[0]["passed"]
    assert recorded[0]["details"]["evidence_stage"] == "download"
    row = registry_row(out, tmp_path)
    assert row["provenance_verified"] == "false" and row["g1"] == "false"


def test_provenance_needs_a_recorded_passing_outcome_of_each_gate():
    def gate(gid: str, passed: bool) -> Evidence:
        return Evidence(gid, gid, passed, 1, 1, "halt")

    assert provenance_verified([gate("D3", True), gate("D4", True)])
    assert not provenance_verified([gate("D3", True), gate("D4", False)])
    assert not provenance_verified([gate("D3", False), gate("D4", True)])
    assert not provenance_verified([gate("D4", True)])  # no D3 outcome recorded: nothing says all arrived
    assert not provenance_verified([])
