"""The dependency lock (envs/lock/, written by `make lock`): it satisfies pyproject.toml, a requirement
edited without relocking is one line that says to run `make lock`, and the libraries the workflow's
fingerprints record are pinned, so a relock is what moves them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_lock.py"
LOCK_DIR = ROOT / "envs" / "lock"


def check(pyproject: Path, lock_dir: Path = LOCK_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), "--pyproject", str(pyproject), "--lock-dir", str(lock_dir)],
                          capture_output=True, text=True, timeout=60)


def pyproject_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "pyproject.toml").read_text()
    assert old in text
    out = tmp_path / "pyproject.toml"
    out.write_text(text.replace(old, new, 1))
    return out


def test_the_lock_satisfies_pyproject():
    result = check(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("old, new, says", [
    ('"numpy>=2.0"', '"numpy>=99"', "envs/lock/runtime.txt pins numpy==2.4.6, pyproject.toml asks numpy>=99"),
    ('"pyyaml>=6",', '"pyyaml>=6", "humanize>=4",', "envs/lock/runtime.txt does not pin humanize>=4"),
    ('"pytest>=8"', '"pytest>=8", "pytest-timeout>=2"', "envs/lock/test.txt does not pin pytest-timeout>=2"),
    ('"llama-cpp-python==0.3.36"', '"llama-cpp-python==0.3.37"', "envs/lock/llamacpp.txt pins llama-cpp-python"),
    ('"matplotlib>=3.8",', "", "envs/lock/runtime.txt still pins matplotlib, which pyproject.toml no longer asks for"),
    ('requires = ["setuptools>=68"]', 'requires = ["setuptools>=999"]', "envs/lock/test.txt pins setuptools"),
])
def test_a_requirement_edited_without_relocking_is_one_line(tmp_path, old, new, says):
    result = check(pyproject_with(tmp_path, old, new))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("the lock is out of date: ")
    assert says in result.stderr and result.stderr.rstrip().endswith("run `make lock`")


def test_a_missing_lock_file_is_named(tmp_path):
    for name in ("test.txt", "runtime.txt"):
        shutil.copy(LOCK_DIR / name, tmp_path / name)
    result = check(ROOT / "pyproject.toml", tmp_path)
    assert result.returncode == 1 and f"{tmp_path / 'llamacpp.txt'} is missing" in result.stderr


def test_torch_is_left_to_the_makefile_pin():
    """The lock excludes torch (the CPU build is pinned in the Makefile and the conda environment's
    post-deploy script) but keeps
    what the CPU build depends on, and none of the CUDA build's libraries."""
    sys.path.insert(0, str(CHECK.parent))
    try:
        from check_lock import read_lock
    finally:
        sys.path.remove(str(CHECK.parent))
    lock = read_lock(LOCK_DIR / "test.txt")
    assert lock.left_out == {"torch"} and "torch" not in lock.pins
    assert {"sympy", "networkx", "filelock", "fsspec"} <= set(lock.pins)
    assert not [name for name in lock.pins if name.startswith(("nvidia-", "triton"))]
    pin = re.search(r"^TORCH := torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pin and f"torch=={pin[1]}" in (ROOT / "envs" / "apr-qa.post-deploy.sh").read_text()
    assert metadata.version("torch").split("+")[0] == pin[1]


def test_every_library_a_job_can_record_is_locked_and_installed_as_locked():
    """A job's code record holds the versions of the libraries its process imported; each is pinned in
    the lock and installed at that pin, so relocking is exactly what changes them (and reruns those jobs).
    The libraries here are those of a process that imported every module of the package and the libraries
    the package imports inside functions (huggingface_hub, matplotlib, transformers...)."""
    sys.path.insert(0, str(CHECK.parent))
    try:
        from check_lock import read_lock
    finally:
        sys.path.remove(str(CHECK.parent))
    from packaging.utils import canonicalize_name

    code = ("import sys, json, importlib, pkgutil, apr_qa; from apr_qa import cli;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(apr_qa.__path__, 'apr_qa.')];"
            "import huggingface_hub, matplotlib.pyplot, transformers, tokenizers, scipy.stats, safetensors, gguf;"
            "from apr_qa.workflow import fingerprint;"
            "print(json.dumps(fingerprint.loaded_distributions(dict(sys.modules), cli.STARTUP_MODULES)))")
    dists = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert {"torch", "numpy", "huggingface_hub", "matplotlib"} <= set(dists)
    lock = read_lock(LOCK_DIR / "test.txt")
    for dist, version in dists.items():
        name = canonicalize_name(dist)
        if dist == "python" or name in lock.left_out:
            continue
        assert name in lock.pins, f"a job can record {dist}, which the lock does not pin"
        assert version == str(lock.pins[name]), (dist, version, lock.pins[name])


def test_the_conda_environment_names_the_lock_and_this_repository_from_snakemakes_copy(tmp_path, monkeypatch):
    """Snakemake builds envs/apr-qa.yaml from a copy under .snakemake/conda/, and conda hands the pip
    entries to pip as a requirements file there: every path must still name the repository's files.
    (Conda's channels cannot be reached from CI; this is the part that can be checked here.)"""
    import yaml
    from packaging.utils import canonicalize_name
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    env = yaml.safe_load((ROOT / "envs/apr-qa.yaml").read_text())
    pip_entries = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    copy = tmp_path / ".snakemake" / "conda"
    copy.mkdir(parents=True)
    requirements = copy / "condaenv.requirements.txt"  # what conda writes beside the copy
    requirements.write_text("\n".join(pip_entries) + "\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("APR_QA_ROOT", str(ROOT))  # rules/common.smk sets it to the Snakefile's folder
    assert "APR_QA_ROOT" in (ROOT / "rules/common.smk").read_text()
    parsed = list(parse_requirements(str(requirements), PipSession()))
    names = {canonicalize_name(p.requirement.split("==")[0]) for p in parsed}
    sys.path.insert(0, str(CHECK.parent))
    try:
        from check_lock import read_lock
    finally:
        sys.path.remove(str(CHECK.parent))
    assert names == set(read_lock(LOCK_DIR / "runtime.txt").pins)

    script = ROOT / "envs/apr-qa.post-deploy.sh"  # Snakemake runs it in the new environment
    subprocess.run(["sh", "-n", str(script)], check=True)
    editable = next(line for line in script.read_text().splitlines() if " -e " in line)
    assert '"$APR_QA_ROOT"' in editable
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--report", str(report), "-e", os.environ["APR_QA_ROOT"]],
                   cwd=copy, check=True, capture_output=True)
    (installed,) = json.loads(report.read_text())["install"]
    assert installed["metadata"]["name"] == "apr-qa" and installed["download_info"]["url"] == ROOT.as_uri()
