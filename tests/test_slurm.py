"""Cluster execution through snakemake-executor-plugin-slurm on a real one-node SLURM cluster.

The session fixture (tests/helpers/slurm_cluster.py) installs Debian's slurm-wlm and munge if needed (root only),
starts munged, slurmctld and slurmd and stops them by PID afterwards. Where SLURM cannot be installed
(not root, no apt, install failure) every test here is skipped with the reason; a cluster that was
installed but does not come up is an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slurm_cluster import ClusterUnavailable, SlurmCluster, start_cluster
from workflow_ws import TEST_CORPUS

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
# Test-only speed-ups on top of the profile: poll SLURM every second instead of every 20 s, and no
# shared-filesystem latency to wait for on one machine.
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
                "--latency-wait", "5"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> SlurmCluster:
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        print(f"SLURM tests skipped: {exc}", file=sys.stderr)
        pytest.skip(f"no SLURM test cluster: {exc}")
    print(f"SLURM cluster: install {cluster.install_seconds:.1f} s, daemons up in {cluster.start_seconds:.1f} s, "
          f"PIDs {cluster.pids}", file=sys.stderr)
    yield cluster
    cluster.stop()


def run_snakemake(cluster: SlurmCluster, workdir: Path, *args: str, env: dict | None = None, timeout: float = 900):
    """snakemake on the head node (this process's venv) with the SLURM workflow profile."""
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", str(PROFILE), *FAST_POLLING, *args]
    env = dict(env or os.environ, SLURM_CONF=cluster.env["SLURM_CONF"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def submissions(log: str) -> dict[str, Path]:
    """SLURM job id -> its log file, from the executor's 'has been submitted' lines."""
    return {slurm_id: Path(path) for _, slurm_id, path in SUBMITTED.findall(log)}


def job_state(cluster: SlurmCluster, slurm_id: str) -> str:
    """JobState from slurmctld (accounting is off; finished jobs stay known for MinJobAge seconds)."""
    return re.search(r"JobState=(\S+)", cluster.run("scontrol", "show", "job", slurm_id)).group(1)


# A workflow of its own, so the harness and the profile's executor settings are proven independently
# of the model pipeline: a head-node rule (like downloads without internet on compute nodes), a rule
# under a global concurrency limit, a gate that fails on purpose for sample "bad", and an aggregate.
TOY_SNAKEFILE = textwrap.dedent(r'''
    SAMPLES = ["a", "b"]
    localrules: fetch

    rule all:
        input: "report.txt"

    rule fetch:
        output: "fetched/{s}.txt"
        shell: "echo {wildcards.s} > {output}"

    rule convert:
        input: "fetched/{s}.txt"
        output: "converted/{s}.txt"
        resources: convert_slots=1
        shell:
            "start=$(date +%s.%N); sleep 2; "
            "echo {wildcards.s} $start $(date +%s.%N) ${{SLURM_JOB_ID:-none}} > {output}"

    rule gate:
        input: "converted/{s}.txt"
        output: "gates/{s}.ok"
        shell:
            "if [ {wildcards.s} = bad ]; then echo 'gate G1 failed for {wildcards.s}' >&2; exit 1; fi; "
            "echo ${{SLURM_JOB_ID:-none}} > {output}"

    rule report:
        input: expand("gates/{s}.ok", s=SAMPLES)
        output: "report.txt"
        shell: "cat {input} > {output}"
''')


@pytest.fixture
def toy(tmp_path) -> Path:
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    return tmp_path


def test_every_remote_job_goes_through_sbatch_and_global_limit_holds(slurm, toy):
    result = run_snakemake(slurm, toy, "--resources", "convert_slots=1")
    assert result.returncode == 0, result.stderr[-4000:]
    submitted = submissions(result.stderr)
    # 2 convert + 2 gate + 1 report went to SLURM; the 2 fetch jobs ran on the head node.
    assert len(submitted) == 5, result.stderr[-4000:]
    for slurm_id, log in submitted.items():
        assert log.is_file(), f"no SLURM log for job {slurm_id}: {log}"
        assert log.is_relative_to(toy / ".snakemake" / "slurm_logs")
        assert job_state(slurm, slurm_id) == "COMPLETED"
    assert not (toy / ".snakemake" / "slurm_logs" / "rule_fetch").exists()
    assert sorted(p.name for p in (toy / "fetched").iterdir()) == ["a.txt", "b.txt"]

    # Each converted file names the SLURM job it ran in, and that job's log sits under rule_convert.
    spans = []
    for sample in "ab":
        name, start, end, job_id = (toy / "converted" / f"{sample}.txt").read_text().split()
        assert name == sample and job_id in submitted
        assert submitted[job_id].parent == toy / ".snakemake" / "slurm_logs" / "rule_convert" / sample
        spans.append((float(start), float(end)))
    # convert_slots=1 is tallied by the head-node scheduler across all submitted jobs: never two at once,
    # although the node has room for both (2 CPUs, 1 each).
    spans.sort()
    assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:], strict=False)), spans
    gate_jobs = (toy / "report.txt").read_text().split()
    assert len(gate_jobs) == 2 and all(job_id in submitted for job_id in gate_jobs)
    assert all(submitted[job_id].parent.parent.name == "rule_gate" for job_id in gate_jobs)


def test_failing_gate_is_a_failed_slurm_job_with_its_log_kept(slurm, toy):
    (toy / "converted").mkdir()
    (toy / "converted" / "bad.txt").write_text("bad 0 0 none\n")  # only the gate job is needed
    result = run_snakemake(slurm, toy, "--retries", "0", "gates/bad.ok")
    assert result.returncode != 0
    failed = re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: 'FAILED'", result.stderr)
    assert len(failed) == 1, result.stderr[-4000:]
    slurm_id = failed[0]
    assert job_state(slurm, slurm_id) == "FAILED"
    log = submissions(result.stderr)[slurm_id]
    assert log.parent == toy / ".snakemake" / "slurm_logs" / "rule_gate" / "bad"
    assert "gate G1 failed for bad" in log.read_text()
    assert not (toy / "gates" / "bad.ok").exists()


# ---------------------------------------------------------------------------------------------------
# The real workflow (Snakefile, rules/, profiles/slurm) on a tiny generated llama served from a local
# HuggingFace cache: once locally with profiles/default, once through SLURM; deterministic artifacts
# must be identical.

WORKFLOW_MODEL, WORKFLOW_REPO = "tiny-llama", "test/tiny-llama"
WORKFLOW_VARIANTS = ["f16", "q4_0"]
# the rest are localrules
REMOTE_RULES = {"download": 1, "golden_reference": 1, "convert": 2, "validate": 2, "evaluate": 2}
PROMPTS = """\
metadata: {version: "test-1"}
prompts:
  - {id: sanity-any, input: "hello world", expected_pattern: "(?s).*", category: sanity}
"""
# Random tiny weights sit far from the distributions the default precision limits are calibrated on.
TOLERANCES = "tolerances: {Q4_0: {kl: 0.5, cosine: 0.95, rrmse: 0.3}}\n"


def workflow_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SNAKEMAKE"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama) -> Path:
    """The tiny llama downloaded into an HF cache through the local mirror (as build_local_hub.py does)."""
    from apr_qa.hub.mirror import HubMirror

    root = tmp_path_factory.mktemp("slurm-hub")
    with HubMirror({WORKFLOW_REPO: tiny_llama}) as hub:
        env = dict(workflow_env(), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(root / "cache"))
        subprocess.run([str(Path(sys.executable).parent / "apr-qa"), "download", WORKFLOW_REPO,
                        "--manifest", str(root / "m.json")], env=env, check=True, capture_output=True)
    return root / "cache"


def make_workspace(ws: Path, cache: Path) -> Path:
    ws.mkdir(parents=True)
    for name in ("Snakefile", "rules", "envs", "profiles"):
        (ws / name).symlink_to(REPO / name)
    (ws / "config/prompts").mkdir(parents=True)
    (ws / "config/schema.yaml").write_text((REPO / "config/schema.yaml").read_text())
    (ws / "config/prompts/test.yaml").write_text(PROMPTS)
    (ws / "config/tolerances.yaml").write_text(TOLERANCES)
    cfg = {
        "failure_policy": "stop-on-p0", "checksum_cache": "results/.checksums",
        "hub": {"cache_dir": str(cache), "offline": True, "endpoint": None},
        "download": {"max_size_gb": 10, "retries": 1}, "variants": WORKFLOW_VARIANTS,
        "validation": {"tolerances": "config/tolerances.yaml"},
        "corpus": TEST_CORPUS,
        "evaluation": {"prompts": "config/prompts/test.yaml", "runs": 1, "device": "cpu", "threads": 1,
                       "extra_args": "--max-new-tokens 2 --timeout 120"},
        "models": [{"id": WORKFLOW_MODEL, "repo": WORKFLOW_REPO}],
    }
    (ws / "config/config.yaml").write_text(json.dumps(cfg, indent=1))
    return ws


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, hub_cache) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("local") / "ws", hub_cache)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=ws, env=workflow_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ws


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory, hub_cache):
    ws = make_workspace(tmp_path_factory.mktemp("slurm-run") / "ws", hub_cache)
    return ws, run_snakemake(slurm, ws, "results/report.md", env=workflow_env())


def gate_outcomes(path: Path) -> dict[str, tuple[bool, str]]:
    """gate id -> (passed, level) of an evidence document."""
    doc = json.loads(path.read_text())
    return {g["id"]: (g["passed"], g["level"]) for g in doc["gates"]}


@pytest.mark.slow
def test_workflow_on_slurm_equals_local_run(slurm, local_run, slurm_run):
    ws, proc = slurm_run
    assert proc.returncode == 0, proc.stderr[-6000:]
    submitted = submissions(proc.stderr)
    logs = ws / ".snakemake" / "slurm_logs"
    by_rule: dict[str, int] = {}
    for slurm_id, log in submitted.items():
        assert log.is_file() and log.is_relative_to(logs), log
        assert job_state(slurm, slurm_id) == "COMPLETED"
        rule = log.relative_to(logs).parts[0].removeprefix("rule_")
        by_rule[rule] = by_rule.get(rule, 0) + 1
    assert by_rule == REMOTE_RULES, proc.stderr[-6000:]
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"rule_{r}" for r in REMOTE_RULES)

    for variant in WORKFLOW_VARIANTS:
        name = f"{WORKFLOW_MODEL}/{WORKFLOW_MODEL}.{variant}.apr"
        apr_local, apr_slurm = local_run / "results/apr" / name, ws / "results/apr" / name
        assert hashlib.sha256(apr_slurm.read_bytes()).digest() == hashlib.sha256(apr_local.read_bytes()).digest()
        for stage in ("validate", "evaluate"):
            rel = f"results/{stage}/{WORKFLOW_MODEL}/{variant}.json"
            assert gate_outcomes(ws / rel) == gate_outcomes(local_run / rel), rel
            assert (ws / f"results/gates/{stage}/{WORKFLOW_MODEL}/{variant}.ok").exists()
    report = (ws / "results/report.md").read_text()
    assert report.count("CERTIFIED") == (local_run / "results/report.md").read_text().count("CERTIFIED") \
        == len(WORKFLOW_VARIANTS)


@pytest.mark.slow
def test_workflow_gate_failure_is_a_failed_slurm_job(slurm, slurm_run, hub_cache):
    """A corrupted download trips D4 (halt) inside the convert job: FAILED in SLURM, its log kept.

    Runs after the equality test (file order): it corrupts this module's HF cache.
    """
    ws, built = slurm_run
    assert built.returncode == 0, built.stderr[-3000:]
    blob = next(hub_cache.glob(f"models--{WORKFLOW_REPO.replace('/', '--')}/blobs/*"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    target = f"results/apr/{WORKFLOW_MODEL}/{WORKFLOW_MODEL}.f16.apr"
    proc = run_snakemake(slurm, ws, "--forcerun", "convert", target, env=workflow_env())
    assert proc.returncode != 0
    failed = re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: 'FAILED'", proc.stderr)
    submitted = submissions(proc.stderr)
    failed_logs = [submitted[slurm_id] for slurm_id in failed]
    for slurm_id, log in zip(failed, failed_logs, strict=True):
        assert job_state(slurm, slurm_id) == "FAILED"
        assert log.is_file() and log.parent.parent.name == "rule_convert"
        assert "Error in rule convert" in log.read_text()
    # The profile's retries: 1 resubmits once; the andon line is stopped by then, so it fails again.
    assert [log.parent.name for log in failed_logs].count(f"{WORKFLOW_MODEL}_f16") == 2, proc.stderr[-6000:]
    assert "D4" in (ws / f"results/logs/convert/{WORKFLOW_MODEL}/f16.log").read_text()
