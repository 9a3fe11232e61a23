"""Real Snakemake runs of the workflow on tiny generated models served from a local HF cache.

One module-scoped workspace is built once (full build); the tests then mutate it in order: no-op,
forced re-conversion (early cutoff), a quantizer edit (exact rerun set), a forced gate failure, and
a tampered download. The package source is copied into the workspace (PYTHONPATH) so editing the
quantizer never touches the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_ws import TEST_CORPUS_ON

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow]

MODELS = {"tiny-llama": "test/tiny-llama", "tiny-gguf": "test/tiny-llama-gguf"}
VARIANTS = ["f16", "q4_0"]
PROMPTS = """\
metadata: {version: "test-1"}
prompts:
  - {id: sanity-any, input: "hello world", expected_pattern: "%s", category: sanity}
  - {id: echo, input: "one two three", expected_pattern: "four", category: format}
"""
# Random tiny weights sit far from the distributions the default precision limits are calibrated on.
TOLERANCES = "tolerances: {Q4_0: {kl: 0.5, cosine: 0.95, rrmse: 0.3}}\n"
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def _env(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SNAKEMAKE"))}
    env.update(PYTHONPATH=str(ws / "src"), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def snakemake(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), "--cores", "2", *args], cwd=ws, env=_env(ws),
                          capture_output=True, text=True)


def nothing_to_do(ws: Path, *targets: str) -> bool:
    proc = snakemake(ws, "-n", *targets)
    return proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def executed(proc: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, "model/variant") of every job Snakemake started, parsed from its log."""
    jobs, rule = set(), None
    for line in proc.stderr.splitlines():
        m = JOB_HEADER.match(line.strip())
        if m:
            rule = m.group(1)
            if rule in ("all", "report"):
                jobs.add((rule, ""))
            continue
        if rule and line.strip().startswith("wildcards:"):
            wc = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
            name = rule if rule != "gate" else f"gate-{wc['stage']}"
            jobs.add((name, "/".join(wc[k] for k in ("model", "variant") if k in wc)))
            rule = None
    return jobs - {("all", "")}


def chain(model: str, variant: str) -> set[tuple[str, str]]:
    mv = f"{model}/{variant}"
    return {("convert", mv), ("validate", mv), ("gate-validate", mv), ("evaluate", mv),
            ("gate-evaluate", mv), ("summarize", mv)}


def write_config(ws: Path, cache: Path, policy: str = "stop-on-p0") -> None:
    cfg = {
        "failure_policy": policy, "checksum_cache": "results/.checksums",
        "hub": {"cache_dir": str(cache), "offline": True, "endpoint": None},
        "download": {"max_size_gb": 10, "retries": 1}, "variants": VARIANTS,
        "validation": {"tolerances": "config/tolerances.yaml"},
        "corpus": TEST_CORPUS_ON,
        "evaluation": {"prompts": "config/prompts/test.yaml", "runs": 1, "device": "cpu", "threads": 1,
                       "extra_args": "--max-new-tokens 2 --timeout 120"},
        "models": [{"id": mid, "repo": repo} for mid, repo in MODELS.items()],
    }
    (ws / "config/config.yaml").write_text(json.dumps(cfg, indent=1))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama, tiny_gguf) -> Path:
    """The tiny models downloaded into an HF cache through the mirror (as build_local_hub.py does)."""
    from apr_qa.hub.mirror import HubMirror

    root = tmp_path_factory.mktemp("hub")
    repos = {MODELS["tiny-llama"]: tiny_llama, MODELS["tiny-gguf"]: [tiny_gguf("Q8_0")]}
    with HubMirror(repos) as hub:
        env = dict(_env(root), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(root / "cache"))
        for repo in repos:
            subprocess.run([str(BIN / "apr-qa"), "download", repo, "--manifest", str(root / "m.json")],
                           env=env, check=True, capture_output=True)
    return root / "cache"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hub_cache) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    for name in ("Snakefile", "rules", "envs", "profiles"):
        (ws / name).symlink_to(ROOT / name)
    (ws / "config/prompts").mkdir(parents=True)
    shutil.copy(ROOT / "config/schema.yaml", ws / "config/schema.yaml")
    (ws / "config/prompts/test.yaml").write_text(PROMPTS % "(?s).*")
    (ws / "config/tolerances.yaml").write_text(TOLERANCES)
    shutil.copytree(ROOT / "src/apr_qa", ws / "src/apr_qa", ignore=shutil.ignore_patterns("__pycache__"))
    write_config(ws, hub_cache)
    return ws


@pytest.fixture(scope="module")
def built(workspace) -> subprocess.CompletedProcess:
    proc = snakemake(workspace)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def test_full_build(workspace, built, hub_cache):
    want = {(job, m) for m in MODELS for job in ("download", "golden_reference", "corpus_reference")} | {("report", "")}
    for m in MODELS:
        for v in VARIANTS:
            want |= chain(m, v)
    assert executed(built) == want
    report = (workspace / "results/report.md").read_text()
    assert report.count("CERTIFIED") == len(MODELS) * len(VARIANTS)
    for m in MODELS:
        manifest = json.loads((workspace / f"results/download/{m}/manifest.json").read_text())
        assert re.fullmatch(r"[0-9a-f]{40}", manifest["commit"]) and manifest["offline"] is True
        assert manifest["commit"] in report
    # the convert jobs leased the models' revisions in the model cache; the run's end released them all
    state = json.loads((hub_cache.with_name(hub_cache.name + ".apr-qa") / "state.json").read_text())
    assert state["leases"] == {}


def test_noop_plans_zero_jobs(workspace, built):
    assert nothing_to_do(workspace, "results/report.md")


def _planned(proc: subprocess.CompletedProcess) -> set[str]:
    """The rules of the jobs a dry run lists."""
    return {m.group(1) for line in (proc.stdout + proc.stderr).splitlines() if (m := JOB_HEADER.match(line.strip()))}


def test_every_edit_reruns_exactly_the_jobs_that_loaded_the_file(workspace, built):
    """Each job recorded the package files it loaded (results/.code). One at a time, every module and C
    source of the package gets a comment appended: the code keys that change are exactly those of the
    jobs that loaded it, and Snakemake's plan follows them."""
    from apr_qa.workflow import fingerprint

    src, results = workspace / "src/apr_qa", workspace / "results"

    def keys() -> dict[str, str]:
        fingerprint._file_digest.cache_clear()
        return fingerprint.job_keys(results, src)

    before = keys()
    loaded = {job: set(json.loads((results / ".code" / f"{job}.json").read_text())["files"]) for job in before}
    assert len(loaded) == 2 * (3 + 6 * len(VARIANTS)) + 1  # per model 3 jobs + 6 per variant, and the report
    reruns: dict[str, set[str]] = {}
    for path in sorted(p for p in src.rglob("*") if p.suffix in (".py", ".c")):
        rel, text = path.relative_to(src).as_posix(), path.read_bytes()
        path.write_bytes(text + (b"\n/* edited */\n" if path.suffix == ".c" else b"\n# edited\n"))
        try:
            after = keys()
        finally:
            path.write_bytes(text)
        reruns[rel] = {job for job in before if after[job] != before[job]}
        assert reruns[rel] == {job for job, files in loaded.items() if rel in files}, rel
    assert keys() == before

    jobs = set(loaded)
    assert reruns["cli.py"] == jobs  # every job runs apr-qa
    for rel in ("report/render.py", "report/sections.py", "hub/model_cache.py", "yamlsafe.py"):
        assert "report" in reruns[rel], rel  # what writes report.html, and what loads its playbooks
    evaluations = {job for job in jobs if job.startswith("evaluate/")}
    assert evaluations <= reruns["five_whys.py"] & reruns["yamlsafe.py"] & reruns["runtime/matmul.c"]
    assert {"convert/tiny-llama/q4_0", "convert/tiny-gguf/q4_0"} <= reruns["quant/q4_0.py"]
    assert all(job.endswith("/q4_0") for job in reruns["quant/q4_0.py"])  # no f16 job loads the q4_0 codec
    assert not reruns["quant/q4_k.py"] and not reruns["commands/export.py"] and not reruns["serve.py"]

    render = src / "report/render.py"
    text = render.read_text()
    render.write_text(text + "\n# edited\n")
    try:
        assert _planned(snakemake(workspace, "-n")) == {"report", "all"}
    finally:
        render.write_text(text)
    assert nothing_to_do(workspace)


def test_identical_reconversion_does_not_cascade(workspace, built):
    """Early cutoff: deleted .apr files are rebuilt byte-identical (the results claim them), and
    nothing downstream of them reruns."""
    evicted = sorted(workspace.glob("results/apr/*/*.apr"))
    before = [p.read_bytes() for p in evicted]
    for apr in evicted:
        apr.unlink()
    assert not nothing_to_do(workspace, "results/report.md")
    proc = snakemake(workspace, "results/report.md")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert executed(proc) == {("convert", f"{m}/{v}") for m in MODELS for v in VARIANTS}
    assert [p.read_bytes() for p in evicted] == before


def test_quantizer_edit_reruns_exactly_its_variant(workspace, built):
    q4_0 = workspace / "src/apr_qa/quant/q4_0.py"
    # a quantizer change that moves every block's scale (so the q4_0 bytes change)
    q4_0.write_text(q4_0.read_text() + "\n\n_reference = quantize_blocks\n\n\n"
                    "def quantize_blocks(blocks, out):\n    _reference(blocks * np.float32(1.01), out)\n")
    proc = snakemake(workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = {("report", "")}
    for m in MODELS:
        want |= chain(m, "q4_0")
    assert executed(proc) == want
    assert nothing_to_do(workspace)


def test_forced_gate_failure_blocks_variant(workspace, built):
    """An impossible sanity pattern trips T4 (fail level): failed gate jobs, BLOCKED rows, exit != 0."""
    prompts = workspace / "config/prompts/test.yaml"
    prompts.write_text(PROMPTS % "^never matches$")
    try:
        proc = snakemake(workspace, "results/report.md")
        assert proc.returncode != 0
        assert "gate T4" in proc.stderr and "tiny-llama/f16" in proc.stderr
        report = (workspace / "results/report.md").read_text()
        rows = [line for line in report.splitlines() if "BLOCKED" in line]
        assert len(rows) == len(MODELS) * len(VARIANTS)
        assert all("T4" in r for r in rows)
        log = (workspace / "results/logs/gate/evaluate/tiny-llama/f16.log").read_text()
        assert "T4" in log and "measured 0" in log and "threshold > 0.5" in log
    finally:
        prompts.write_text(PROMPTS % "(?s).*")
    proc = snakemake(workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workspace / "results/report.md").read_text().count("CERTIFIED") == len(MODELS) * len(VARIANTS)


def test_tampered_download_halts(tmp_path, workspace, built, hub_cache):
    """A corrupted cached blob: D4 halts the download job, nothing downstream of it is built."""
    cache = tmp_path / "cache"
    shutil.copytree(hub_cache, cache, symlinks=True)
    blob = next(cache.glob("models--test--tiny-llama-gguf/blobs/*"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("Snakefile", "rules", "envs", "profiles", "config", "src"):
        if name == "config":
            shutil.copytree(workspace / name, ws / name)
        else:
            (ws / name).symlink_to(workspace / name)
    write_config(ws, cache)
    proc = snakemake(ws)
    assert proc.returncode != 0
    assert "D4 checksum mismatch" in (ws / "results/logs/download/tiny-gguf.log").read_text()
    # no manifest: only the failure, recorded as measured (D4 failed, naming the differing file)
    assert [f.name for f in (ws / "results/download/tiny-gguf").iterdir()] == ["manifest.failed.json"]
    failed = json.loads((ws / "results/download/tiny-gguf/manifest.failed.json").read_text())
    assert failed["failure"]["gate"] == "D4" and not next(g for g in failed["gates"] if g["id"] == "D4")["passed"]
    assert not (ws / "results/apr/tiny-gguf").exists() and not (ws / "results/validate/tiny-gguf").exists()
    assert (ws / "results/andon/STOP").exists()  # halt-level under stop-on-p0 stops the line
    report = (ws / "results/report.md").read_text()
    assert "LINE STOPPED" in report and "D4" in report
