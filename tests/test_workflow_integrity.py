"""Integrity end to end: checksum records, the footer CRC at load, temporary files of killed
commands, and real Snakemake runs in which a built .apr is deleted, damaged, or a stage fails.

The fast tests run the real commands on a tiny converted model. The Snakemake tests (slow) share
one workspace built from a shell whose PATH lacks the virtual environment (workflow_ws).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_ws import MODEL, VARIANTS, env, frozen_src, hub_cache, nothing_to_do, snakemake, workspace

from apr_qa.apr import AprReader
from apr_qa.errors import FormatError
from apr_qa.workflow import checksums
from apr_qa.workflow.tempfiles import remove_stale_temps

APR_QA = str(Path(sys.executable).parent / "apr-qa")


def apr_qa(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if k != checksums.CACHE_ENV} | env
    return subprocess.run([APR_QA, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=run_env)


def flip_byte(path: Path, at: int | None = None) -> None:
    """One bit of the file changed in place; size and modification time are put back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def tiny_apr(tmp_path_factory, tiny_llama) -> Path:
    out = tmp_path_factory.mktemp("apr") / "m.q8_0.apr"
    proc = apr_qa("convert", tiny_llama, out, "--quant", "q8_0")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def apr(tmp_path, tiny_apr) -> Path:
    """A private copy with its checksum record, written as the convert rule writes it (relative path)."""
    (tmp_path / "results").mkdir()
    path = tmp_path / "results/m.apr"
    shutil.copy(tiny_apr, path)
    proc = apr_qa("checksum", "results/m.apr", "--json", "results/m.apr.sha256.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return path


# ---- verify-checksums -----------------------------------------------------------------------------

def test_verify_checksums_accepts_the_apr_record(apr):
    record = apr.with_name("m.apr.sha256.json")
    assert json.loads(record.read_text())["path"] == "results/m.apr"
    proc = apr_qa("verify-checksums", "results/m.apr.sha256.json", cwd=apr.parent.parent)
    assert proc.returncode == 0 and "1 files match" in proc.stderr
    proc = apr_qa("verify-checksums", record)  # from elsewhere: the file beside its record
    assert proc.returncode == 0 and "1 files match" in proc.stderr


def test_verify_checksums_catches_a_flipped_byte(apr, tmp_path):
    cache = tmp_path / "cache"
    apr_qa("verify-checksums", apr.with_name("m.apr.sha256.json"), APR_QA_CHECKSUM_CACHE=str(cache))
    flip_byte(apr)  # size and mtime unchanged: the cache's ctime/inode key still sees the write
    for cache_env in ({}, {checksums.CACHE_ENV: str(cache)}):
        proc = apr_qa("verify-checksums", apr.with_name("m.apr.sha256.json"), **cache_env)
        assert proc.returncode == 3, proc.stderr  # halt
        assert proc.stderr.count("\n") == 1 and f"{apr.name}: D4 checksum mismatch" in proc.stderr
        assert "differs from the recorded" in proc.stderr and "rebuild" in proc.stderr


def test_verify_checksums_accepts_manifests_cache_entries_and_several_records(apr, tmp_path):
    side = tmp_path / "config.json"
    side.write_text("{}")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"status": "ok", "repo": "t/m", "files": [
        {"name": "config.json", "path": str(side), "sha256": checksums.sha256(side, cache_dir=None)}]}))
    cache = tmp_path / "cache"
    big = tmp_path / "big.bin"  # files this size get cache entries (smaller ones are hashed directly)
    big.write_bytes(os.urandom(checksums.DIRECT_BELOW))
    checksums.sha256(big, cache_dir=cache)
    entry = next(cache.glob("*.json"))
    assert set(json.loads(entry.read_text())) == {"path", "stat", "sha256"}
    proc = apr_qa("verify-checksums", manifest, entry, apr.with_name("m.apr.sha256.json"), "--no-cache")
    assert proc.returncode == 0 and "3 records: 3 files match" in proc.stderr, proc.stderr
    side.write_text("{ }")
    proc = apr_qa("verify-checksums", manifest)
    assert proc.returncode == 3 and "config.json: D4 checksum mismatch" in proc.stderr
    assert "download it again: snakemake --forcerun" in proc.stderr


@pytest.mark.parametrize("content,error", [
    ({"status": "skipped", "files": []}, "lists no files (status skipped): nothing to verify"),
    ({"gates": []}, "not a checksum record"),
    ({"path": "gone.apr", "sha256": "0" * 64}, "gone.apr: missing, but named by the checksum record"),
])
def test_verify_checksums_fails_when_it_verified_nothing(tmp_path, content, error):
    record = tmp_path / "record.json"
    record.write_text(json.dumps(content))
    proc = apr_qa("verify-checksums", record)
    assert proc.returncode != 0 and error in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# ---- the footer CRC when a model is loaded -------------------------------------------------------

def test_loading_for_inference_checks_the_footer_crc(apr):
    flip_byte(apr, at=apr.stat().st_size - 200)  # tensor data, far from the header and index
    with AprReader(apr) as reader:  # opening alone reads no tensor data: inspect still works
        assert reader.entries
    with pytest.raises(FormatError, match="footer CRC mismatch"):
        AprReader(apr, verify=True)
    proc = apr_qa("run", apr, "hello", "--max-new-tokens", "1")
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "footer CRC mismatch" in proc.stderr
    assert apr_qa("inspect", apr).returncode == 0


# ---- temporary files of killed commands ----------------------------------------------------------

def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "results/apr/m" / f".m.q4_k.apr.{dead.pid}.tmp"
    live = tmp_path / "results/validate" / f".f16.json.{os.getpid()}.tmp"
    final = tmp_path / "results/apr/m/m.q4_k.apr"
    for p in (stale, live, final):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert remove_stale_temps([tmp_path / "results"]) == [stale]
    assert not stale.exists() and live.exists() and final.exists()


# ---- real Snakemake runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_llama) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    ws = workspace(root / "ws", hub_cache(root, tiny_llama), frozen_src(root))
    proc = snakemake(ws)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ws


def _apr(ws: Path, variant: str) -> Path:
    return ws / f"results/apr/{MODEL}/{MODEL}.{variant}.apr"


def _jobs(proc: subprocess.CompletedProcess) -> list[str]:
    from test_workflow_snakemake import executed

    return sorted(f"{rule} {mv}".strip() for rule, mv in executed(proc))


@pytest.mark.slow
def test_built_from_a_bare_shell(built):
    """PATH without the venv: jobs still find apr-qa (the environment that runs Snakemake)."""
    assert str(Path(sys.executable).parent) not in env(built / ".src")["PATH"].split(os.pathsep)
    report = (built / "results/report.md").read_text()
    assert report.count("CERTIFIED") == len(VARIANTS) and "Overall: **GREEN**" in report
    assert nothing_to_do(built)


@pytest.mark.slow
def test_deleted_apr_is_rebuilt_without_cascade(built):
    apr = _apr(built, "q8_0")
    before = apr.read_bytes()
    apr.unlink()
    plan = snakemake(built, "-n")
    assert f"Missing output files: {apr.relative_to(built)}" in plan.stdout + plan.stderr
    proc = snakemake(built)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _jobs(proc) == [f"convert {MODEL}/q8_0"]  # identical bytes: nothing downstream reruns
    assert apr.read_bytes() == before
    assert "Overall: **GREEN**" in (built / "results/report.md").read_text()
    assert nothing_to_do(built)


def _without_timing(manifest: Path) -> dict:
    record = json.loads(manifest.read_text())
    record.pop("download_seconds")
    record["gates"] = [g for g in record["gates"] if g["id"] != "D6"]
    return record


@pytest.mark.slow
def test_deleted_manifest_is_rebuilt_alone(built):
    manifest = built / f"results/download/{MODEL}/manifest.json"
    before = _without_timing(manifest)
    manifest.unlink()
    proc = snakemake(built)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same files, commit and checksums; only the measured download time (D6) differs
    assert _jobs(proc) == [f"download {MODEL}"] and _without_timing(manifest) == before
    assert nothing_to_do(built)


@pytest.mark.slow
def test_damaged_apr_halts_the_run_naming_it(built):
    apr = _apr(built, "f16")
    flip_byte(apr)
    plan = snakemake(built, "-n")
    assert f"INTEGRITY: {apr.relative_to(built)}: sha256" in plan.stderr
    proc = snakemake(built)
    assert proc.returncode != 0
    assert f"{apr.relative_to(built)}: D4 checksum mismatch" in proc.stderr and "to rebuild it" in proc.stderr
    report = (built / "results/report.md").read_text()
    assert "GREEN" not in report.split("## Metrics")[0]
    row = next(line for line in report.splitlines() if line.startswith(f"| {MODEL} ") and "| f16 " in line)
    assert "BLOCKED" in row and "D4" in row and apr.name in row
    # the remedy the message names: force the rebuild of that file
    proc = snakemake(built, "--forcerun", str(apr.relative_to(built)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"convert {MODEL}/f16" in _jobs(proc) and "Overall: **GREEN**" in (built / "results/report.md").read_text()
    assert nothing_to_do(built)


@pytest.mark.slow
def test_failed_stage_never_leaves_a_green_report(built):
    """Every conversion fails (the converter raises): Snakemake removes their outputs, and the
    failure report says so instead of keeping the GREEN board of the previous run."""
    broken = built.parent / "broken_src"
    shutil.copytree((built / ".src").resolve(), broken)
    convert_py = broken / "apr_qa/convert.py"
    convert_py.write_text(convert_py.read_text().replace(
        "    source = open_source(source_path, allow_pickle=allow_pickle)",
        "    raise AprQaError('injected failure')", 1))
    assert "injected failure" in convert_py.read_text()
    frozen = (built / ".src").resolve()
    (built / ".src").unlink()
    (built / ".src").symlink_to(broken)
    try:
        proc = snakemake(built)
        assert proc.returncode != 0 and "injected failure" in proc.stderr
        report = (built / "results/report.md").read_text()
        assert "Overall: **RED**" in report and "CERTIFIED" not in report.split("## Metrics")[0]
        assert not _apr(built, "f16").exists()
    finally:
        (built / ".src").unlink()
        (built / ".src").symlink_to(frozen)
    assert snakemake(built).returncode == 0
    assert "Overall: **GREEN**" in (built / "results/report.md").read_text()


@pytest.mark.slow
def test_damaged_download_halts_the_run_naming_it(built):
    """A downloaded file changed after the build (in the HF cache): the next run's report job halts
    on D4 naming it, and the board shows the download stage red."""
    manifest = json.loads((built / f"results/download/{MODEL}/manifest.json").read_text())
    config = Path(next(f["path"] for f in manifest["files"] if f["name"] == "config.json")).resolve()
    original = config.read_bytes()
    try:
        config.write_bytes(original.replace(b"{", b"{ ", 1))
        proc = snakemake(built)
        assert proc.returncode != 0
        assert "config.json: D4 checksum mismatch" in proc.stderr
        assert "download it again: snakemake --forcerun" in proc.stderr
        report = (built / "results/report.md").read_text()
        rows = [line for line in report.splitlines() if line.startswith(f"| {MODEL} ")][:len(VARIANTS)]
        assert all("BLOCKED" in r and "| RED " in r and "D4" in r for r in rows), rows
    finally:
        config.write_bytes(original)
    proc = snakemake(built)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Overall: **GREEN**" in (built / "results/report.md").read_text()
