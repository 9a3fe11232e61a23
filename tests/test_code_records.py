"""Code records (apr_qa.workflow.fingerprint): what a job's apr-qa processes loaded, and the code key the
plan derives from it. Real processes on a frozen copy of the package, so edits here never touch the
repository's sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apr_qa import cli
from apr_qa.workflow import fingerprint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path) -> Path:
    """A frozen copy of src/apr_qa: the package root the processes load and the plan hashes."""
    shutil.copytree(ROOT / "src/apr_qa", tmp_path / "src/apr_qa", ignore=shutil.ignore_patterns("__pycache__"))
    fingerprint._file_digest.cache_clear()  # the plan memoizes file digests per path
    yield tmp_path / "src/apr_qa"
    fingerprint._file_digest.cache_clear()


def run(package: Path, record: Path, key: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(package.parent), **{cli.CODE_RECORD_ENV: str(record), cli.CODE_KEY_ENV: key})
    return subprocess.run([sys.executable, "-m", "apr_qa.cli", *argv], env=env, capture_output=True, text=True,
                          check=True)


def test_a_process_records_the_package_files_and_libraries_it_loaded(package, tmp_path):
    record = tmp_path / ".code/checksum.json"
    run(package, record, "checksum:new", "checksum", str(ROOT / "README.md"))
    body = json.loads(record.read_text())
    assert body["key"] == "checksum:new"
    # cli.py imports the one command module that declares `checksum`; the recorder is not the job's code
    assert {"cli.py", "commands/workflow.py", "workflow/checksums.py"} <= set(body["files"])
    assert "commands/convert.py" not in body["files"] and "workflow/fingerprint.py" not in body["files"]
    assert "torch" not in body["distributions"] and body["distributions"]["python"]
    assert body["digest"] == fingerprint.digest(body["files"], body["distributions"], package)


def test_a_jobs_processes_merge_and_a_new_run_starts_over(package, tmp_path):
    record = tmp_path / ".code/job.json"
    run(package, record, "job:new", "checksum", str(ROOT / "README.md"))
    run(package, record, "job:new", "gates")
    merged = set(json.loads(record.read_text())["files"])
    assert {"commands/workflow.py", "gate_catalogue.py"} <= merged
    # the shell prefix every rule starts with: a run under another key replaces the record
    prefix = fingerprint.job_env(str(record), "job:other")
    subprocess.run(["sh", "-c", f"{prefix} {sys.executable} -m apr_qa.cli architectures > /dev/null"],
                   env=dict(os.environ, PYTHONPATH=str(package.parent)), check=True)
    body = json.loads(record.read_text())
    assert body["key"] == "job:other" and "gate_catalogue.py" not in body["files"]
    assert "arch/llama.py" in body["files"] and "commands/convert.py" in body["files"]


def test_plan_key_follows_the_recorded_files_and_versions_and_is_stable_after_a_rerun(package, tmp_path, monkeypatch):
    record = tmp_path / ".code/job.json"
    assert fingerprint.plan_key("job", record, package) == "job:new"  # never ran: its output is missing anyway
    run(package, record, "job:new", "checksum", str(ROOT / "README.md"))
    assert fingerprint.plan_key("job", record, package) == "job:new"  # nothing changed: the key it ran under

    with (package / "commands/export.py").open("a") as f:  # not loaded by `checksum`
        f.write("\n# an edit the job cannot see\n")
    fingerprint._file_digest.cache_clear()
    assert fingerprint.plan_key("job", record, package) == "job:new"

    with (package / "workflow/checksums.py").open("a") as f:
        f.write("\n# an edit to a module the job loaded\n")
    fingerprint._file_digest.cache_clear()
    changed = fingerprint.plan_key("job", record, package)
    assert changed.startswith("job:") and changed != "job:new"
    run(package, record, changed, "checksum", str(ROOT / "README.md"))  # the rerun, under the changed key
    assert fingerprint.plan_key("job", record, package) == changed  # ... does not change it again

    (package / "workflow/checksums.py").unlink()  # a deleted module counts as changed
    fingerprint._file_digest.cache_clear()
    assert fingerprint.plan_key("job", record, package) != changed


def test_a_library_upgrade_changes_the_key_of_the_jobs_that_imported_it(tmp_path, monkeypatch):
    import numpy.linalg

    record = tmp_path / ".code/job.json"
    fingerprint.merge_into(record, "job:new", {"numpy": numpy, "numpy.linalg": numpy.linalg, "json": json})
    body = json.loads(record.read_text())
    assert set(body["distributions"]) == {"numpy", "python"}  # json is the standard library's
    installed = fingerprint._installed_versions()
    monkeypatch.setattr(fingerprint, "_installed_versions", lambda: {**installed, "numpy": "0.0.1"})
    assert fingerprint.plan_key("job", record) != "job:new"
    assert any(line.strip().startswith("numpy==0.0.1 (recorded") for line in fingerprint.explain(record))
    monkeypatch.setattr(fingerprint, "_installed_versions", lambda: {**installed, "matplotlib": "0.0.1"})
    assert fingerprint.plan_key("job", record) == "job:new"  # a library it never imported


def test_a_quantizer_loads_only_its_own_codec(package):
    """quant/ imports a dtype's codec on first use, and the compiled kernels check only the kernel in use
    against its numpy port: a q4_0 conversion's record cannot name the other quantizers."""
    code = ("import sys, numpy as np; from apr_qa.dtypes import DType; from apr_qa.quant import quantize;"
            "quantize(DType.Q4_0, np.ones((4, 64), np.float32));"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('apr_qa.quant'))))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(package.parent)),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["apr_qa.quant", "apr_qa.quant.native", "apr_qa.quant.q4_0"]


def test_every_command_is_declared_where_the_lazy_cli_looks_for_it():
    full = cli.build_parser()
    choices = set(next(a for a in full._actions if a.dest == "command").choices)
    declared = [c for m in cli.COMMAND_MODULES for c in cli.declared_commands(m)]
    assert sorted(declared) == sorted(choices) and len(set(declared)) == len(declared)
    for module in cli.COMMAND_MODULES:
        for command in cli.declared_commands(module):
            parser = cli.build_parser(command)
            assert command in next(a for a in parser._actions if a.dest == "command").choices


def test_fingerprint_command_explains_a_record(package, tmp_path, capsys):
    record = tmp_path / "results/.code/gate/validate/m/q4_0.json"
    run(package, record, "gate:new", "gates")
    assert fingerprint.rule_of(record) == "gate"
    assert cli.main(["fingerprint", str(record), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "gate:" in out and "commands/workflow.py" in out and "python==" in out
    assert cli.main(["fingerprint", str(tmp_path / "missing.json")]) == 2
    assert "no code record" in capsys.readouterr().err
