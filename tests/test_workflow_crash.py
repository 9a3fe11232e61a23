"""Crash safety of the workflow: SIGKILL Snakemake and all its jobs at seeded random moments, then
`--unlock` and rerun, as a user would after a power cut or an OOM kill.

After every kill: no half-written .apr or JSON carries a final name (each .apr opens with a valid
footer CRC, each JSON parses) and no checksum record claims bytes its file does not have. After
the final rerun: every artifact is byte-identical to an uninterrupted run (the ones that carry
timings have the same gates and statuses), no temporary file is left, and nothing remains to do.

Between kills, a finished run is perturbed so the next kill lands in real work: a forced
re-conversion, a deleted .apr (rebuilt by the integrity check), or forced validation and evaluation.
CRASH_KILLS (default 4, about 80 s; CRASH_KILLS=20 for a longer run) and CRASH_SEED (default 1) change the
number of kills and the moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_workflow_snakemake import JOB_HEADER
from workflow_ws import MODEL, VARIANTS, env, frozen_src, hub_cache, nothing_to_do, snakemake, snakemake_cmd, workspace

from apr_qa.apr import AprReader
from apr_qa.workflow.integrity import problem
from apr_qa.workflow.tempfiles import TEMP_NAME

pytestmark = pytest.mark.slow
KILLS = int(os.environ.get("CRASH_KILLS", "4"))
SEED = int(os.environ.get("CRASH_SEED", "1"))
VOLATILE = ("logs", "benchmarks", ".checksums", "andon")  # run logs, timings, the stat-keyed cache, events
PERTURBATIONS = ("forcerun convert", "delete one .apr", "forcerun validate evaluate")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("crash")
    return hub_cache(root, tiny_llama), frozen_src(root)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, setup) -> tuple[Path, float]:
    """An uninterrupted run, and how long it took."""
    ws = workspace(tmp_path_factory.mktemp("ref") / "ws", *setup)
    t = time.monotonic()
    proc = snakemake(ws)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ws, time.monotonic() - t


def final_files(ws: Path) -> dict[str, Path]:
    results = ws / "results"
    return {str(p.relative_to(results)): p for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] not in VOLATILE and not TEMP_NAME.match(p.name)}


def temp_files(ws: Path) -> list[Path]:
    return [p for p in (ws / "results").rglob("*") if TEMP_NAME.match(p.name)]


def assert_no_partial_outputs(ws: Path, when: str) -> None:
    """Every file under a final name is whole: .apr files pass their CRC, JSON parses, and a
    checksum record matches the file it names."""
    for path in (ws / "results").rglob("*"):
        if not path.is_file() or TEMP_NAME.match(path.name):
            continue
        if path.suffix == ".apr":
            with AprReader(path, verify=True):
                pass
        elif path.suffix == ".json":
            try:
                doc = json.loads(path.read_text())
            except ValueError as exc:
                raise AssertionError(f"{when}: {path} is not whole JSON: {exc}") from None
            if path.name.endswith(".apr.sha256.json"):
                found = problem(path)  # the .apr may be gone (deleted, or removed by Snakemake for a rerun)
                assert found is None or found[1] == "missing", f"{when}: {path} claims bytes {doc['path']} lacks"


def essence(name: str, path: Path) -> object:
    """What must equal the uninterrupted run: the bytes, except for files that record timings
    (conversion seconds, latencies, memory, download time; the latency and Pareto figures), whose gates and
    statuses must be the same."""
    if name.startswith(("latency.", "pareto.")):  # figures of measured latencies (and cost: device time)
        return "present"
    if name.startswith("download/") and name.endswith("manifest.json"):  # gate D6 times the download
        doc = json.loads(path.read_text())
        doc.pop("download_seconds")
        doc["gates"] = [(g["id"], g["passed"]) for g in doc["gates"]]
        return doc
    if name.startswith(("convert/", "evaluate/", "summary/", "certify/")) or name.startswith("report."):
        if not name.endswith(".json"):
            return "present"
        doc = json.loads(path.read_text())
        gates = [(g["id"], g["passed"]) for g in doc.get("gates", [])]
        stages = {s: (v["colour"], [(g["id"], g["passed"]) for g in v["gates"]])
                  for s, v in doc.get("stages", {}).items()}
        return doc.get("status"), doc.get("output"), doc.get("tensors"), gates, stages
    return path.read_bytes()


def last_job(log: Path) -> str:
    """The job Snakemake started last, from its log (for the test's account of where kills landed)."""
    job = "while planning"
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        m = JOB_HEADER.match(line.strip())
        if m:
            wildcards = next((w.split(":", 1)[1].strip() for w in lines[i + 1:i + 8] if "wildcards:" in w), "")
            job = f"after {m.group(1)} {wildcards}".rstrip() + " started"
    return job


def perturb(ws: Path, rng: random.Random) -> tuple[str, list[str]]:
    """Give the next run real work to be killed in: (what was done, snakemake arguments)."""
    choice = rng.choice(PERTURBATIONS)
    if choice == "delete one .apr":
        (ws / f"results/apr/{MODEL}/{MODEL}.{rng.choice(VARIANTS)}.apr").unlink()
        return choice, []
    return choice, ["--forcerun", *choice.split()[1:]]


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, setup, reference):
    ref_ws, ref_seconds = reference
    ws = workspace(tmp_path / "ws", *setup)
    rng = random.Random(SEED)
    kills, attempts, finished, history = 0, 0, False, []
    seconds = {}  # how long a run after each perturbation took when it was not killed
    while kills < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, f"only {kills} of {attempts} runs were still running when killed: {history}"
        kind, args = perturb(ws, rng) if finished else ("resume", [])
        if not finished:  # a killed Snakemake leaves its lock behind
            assert snakemake(ws, "--unlock").returncode == 0
        delay = rng.uniform(0.0, seconds.get(kind, ref_seconds))
        run_log = tmp_path / f"run{attempts}.log"
        with open(run_log, "w") as log:
            start = time.monotonic()
            proc = subprocess.Popen(snakemake_cmd(*args), cwd=ws, env=env((ws / ".src").resolve()), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=delay)
                assert rc == 0, f"run {attempts} failed after {history}: {run_log.read_text()[-3000:]}"
                finished = True
                if kind != "resume":  # a resumed run's length depends on where the last one was killed
                    seconds[kind] = time.monotonic() - start
                history.append(f"{kind}: finished before {delay:.1f}s")
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every job: one process group
                proc.wait()
                kills += 1
                finished = False
                history.append(f"{kind}: killed at {delay:.1f}s {last_job(run_log)}")
        assert_no_partial_outputs(ws, f"after run {attempts} ({history[-1]})")
        left = temp_files(ws)
        history[-1] += f", left {len(left)} temporary files" if left else ""

    print(f"{kills} kills in {attempts} runs:", *history, sep="\n  ")
    # resuming: `--unlock`, then the same command; plus what a kill inside a conversion leaves
    dead = subprocess.Popen(["true"])
    dead.wait()
    planted = ws / f"results/apr/{MODEL}/.{MODEL}.{VARIANTS[0]}.apr.{dead.pid}.tmp"
    planted.write_bytes(b"half an .apr")
    assert snakemake(ws, "--unlock").returncode == 0
    proc = snakemake(ws)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not temp_files(ws), f"temporary files outlived the runs that made them: {temp_files(ws)}"
    assert nothing_to_do(ws)
    got, want = final_files(ws), final_files(ref_ws)
    assert sorted(got) == sorted(want)
    for name in want:
        assert essence(name, got[name]) == essence(name, want[name]), f"{name} differs from the uninterrupted run"
    report = (ws / "results/report.md").read_text()
    assert "Not current" not in report and report.count("CERTIFIED") == len(VARIANTS)
