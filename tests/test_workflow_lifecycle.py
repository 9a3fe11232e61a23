"""The run-level steps of the workflow (apr_qa.workflow.lifecycle), its early-cutoff params
(apr_qa.workflow.cutoff) and the report's integrity param, on real result trees."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from apr_qa import layout
from apr_qa.stacks import StackSpec
from apr_qa.workflow import cutoff, integrity, lifecycle
from apr_qa.workflow.lifecycle import is_not_current, mark_not_current

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def line(tmp_path) -> lifecycle.Line:
    results = tmp_path / "results"
    results.mkdir()
    return lifecycle.Line(results=results, models={"m": {"id": "m", "repo": "org/m"}}, variants={"m": ["q8_0"]},
                          prompts=ROOT / "config/prompts/golden-v1.yaml", checksum_cache=results / ".checksums")


def _interrupted(line: lifecycle.Line) -> Path:
    """A board an interrupted run left "not current", and a killed command's temporary file."""
    line.report.write_text("# board\n")
    mark_not_current(line.report, "earlier")
    temp = line.results / "apr" / "m" / f".m.q8_0.apr.{_dead_pid()}.tmp"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half")
    return temp


def test_recovery_after_a_crash_removes_the_leftovers_but_not_in_a_dry_run_or_under_a_lock(line):
    temp = _interrupted(line)
    line.recover_from_crash(locked=False, dry_run=True)  # snakemake -n deletes nothing
    line.recover_from_crash(locked=True, dry_run=False)  # another Snakemake may be writing them
    assert temp.exists() and is_not_current(line.report)
    line.recover_from_crash(locked=False, dry_run=False)
    assert not temp.exists() and not line.report.exists()


def test_a_run_marks_the_board_and_its_end_rewrites_a_marked_board(line):
    line.report.write_text("# board\n")
    line.start()
    assert is_not_current(line.report)
    line.finish()  # no report job ran: the board is written here
    text = line.report.read_text()
    assert not is_not_current(line.report) and "m" in text
    assert (line.results / "report.html").exists()


def test_a_failed_run_still_writes_a_board(line):
    line.report.write_text("# a board that claimed everything was fine\n")
    line.after_failure()
    assert "claimed everything was fine" not in line.report.read_text()


def test_report_commands_follow_the_tier_and_the_stacks(line):
    assert [c.split()[1] for c in line.report_commands()] == ["report"]
    line.playbook = {"name": "smoke"}
    line.other_stacks = {"llamacpp": StackSpec("llamacpp", "llamacpp")}
    commands = line.report_commands()
    assert [c.split(" && ")[-1].split()[1] for c in commands] == ["export-csv", "junit", "report"]
    assert str(layout.path(line.results, "stack_certification", model="m", stack="llamacpp")) in commands[0]
    assert line.certification_commands([]) == []


def test_digest_param_is_pending_then_the_content_digest_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "m" / "out.json"
    param = cutoff.digest(str(tmp_path / "{model}" / "out.json"))
    assert param({"model": "m"}) == cutoff.PENDING
    path.parent.mkdir()
    path.write_text('{"sha256": "a"}')
    first = param({"model": "m"})
    assert first != cutoff.PENDING and param({"model": "m"}) == first
    path.write_text('{"sha256": "bb"}')  # a checkpoint rewrote it: a new stat key, a new read
    assert param({"model": "m"}) != first
    assert cutoff.recorded_sha256(str(path)) == "bb"


def test_integrity_state_names_missing_and_changed_artifacts(tmp_path):
    manifest, apr, record = tmp_path / "manifest.json", tmp_path / "m.apr", tmp_path / "m.apr.sha256.json"
    claims = [integrity.Claims(manifest=manifest, artifacts=[apr, record], if_downloaded=[tmp_path / "cert.json"],
                               records=[manifest, record])]
    assert integrity.state(claims) == "intact"  # nothing downloaded, nothing claimed
    apr.write_bytes(b"weights")
    assert integrity.state(claims) == f"{manifest}: missing"
    manifest.write_text(json.dumps({"status": "ok", "files": []}))
    record.write_text(json.dumps({"path": str(apr), "size": 7, "sha256": "0" * 64}))
    state = integrity.state(claims)
    assert f"{tmp_path / 'cert.json'}: missing" in state and str(apr) in state  # apr lost its bytes
    os.unlink(apr)
    assert str(apr) in integrity.state(claims) and "missing" in integrity.state(claims)
