"""How long Snakemake takes to plan the workflow's DAG for many models x variants (`snakemake -n`).

Builds a throw-away workspace (the repository's Snakefile, rules and profiles, a generated config of
N models) and times `snakemake -n --workflow-profile profiles/slurm` in three states:

  fresh      nothing built: only the download checkpoints can be planned (the rest waits on them)
  no-op      every output present and up to date: the whole DAG is built and found complete
  re-eval    the prompts file changed: every evaluate job and everything after it is planned

The outputs of the "built" states are small stand-in files with the fields the Snakefile reads
(manifests, digests); planning never opens a model. Next to it, the peer: a bare Snakefile of the same
shape (same rules, same jobs, plain file dependencies, no checkpoints or param functions), planned
fresh, which is what Snakemake itself costs for that many jobs.

    python scripts/bench_dag.py                  # 100 models x 5 variants
    python scripts/bench_dag.py --models 20 --variants f16,q4_0
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = "f16,bf16,q8_0,q4_0,q4_k"
PROMPTS = "config/prompts/golden-v1.yaml"

PEER_SNAKEFILE = """\
MODELS = [f"model-{i:03d}" for i in range(config["n"])]
VARIANTS = config["variants"]

rule report:
    input: expand("results/certify/{m}/{v}.json", m=MODELS, v=VARIANTS)
    output: "results/report.md"
    shell: "touch {output}"

rule download:
    output: "results/download/{m}/manifest.json"
    resources: downloads=1
    shell: "touch {output}"

rule convert:
    input: "results/download/{m}/manifest.json"
    output: "results/apr/{m}/{m}.{v}.apr"
    resources: conversions=1
    shell: "touch {output}"

rule validate:
    input: "results/apr/{m}/{m}.{v}.apr"
    output: "results/validate/{m}/{v}.json"
    resources: validations=1
    shell: "touch {output}"

rule gate:
    input: "results/{stage}/{m}/{v}.json"
    output: "results/gates/{stage}/{m}/{v}.ok"
    shell: "touch {output}"

rule evaluate:
    input: "results/apr/{m}/{m}.{v}.apr", "results/gates/validate/{m}/{v}.ok"
    output: "results/evaluate/{m}/{v}.json"
    resources: evaluations=1
    shell: "touch {output}"

rule certify:
    input: "results/gates/validate/{m}/{v}.ok", "results/gates/evaluate/{m}/{v}.ok"
    output: "results/certify/{m}/{v}.json"
    shell: "touch {output}"
"""


def models(n: int) -> list[str]:
    return [f"model-{i:03d}" for i in range(n)]


def workspace(root: Path, n: int, variants: list[str]) -> Path:
    ws = root / "workflow"
    ws.mkdir()
    for name in ("Snakefile", "rules", "envs", "profiles"):
        (ws / name).symlink_to(ROOT / name)
    (ws / "config/prompts").mkdir(parents=True)
    shutil.copy(ROOT / "config/schema.yaml", ws / "config/schema.yaml")
    shutil.copy(ROOT / PROMPTS, ws / PROMPTS)
    cfg = {
        "checksum_cache": "results/.checksums",
        "hub": {"cache_dir": str(root / "hf-cache"), "offline": True, "endpoint": None},
        "variants": variants,
        "evaluation": {"prompts": PROMPTS, "runs": 5, "device": "cpu", "threads": 2},
        "models": [{"id": m, "repo": f"bench/{m}"} for m in models(n)],
    }
    (ws / "config/config.yaml").write_text(json.dumps(cfg, indent=1))
    return ws


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_built_state(ws: Path, n: int, variants: list[str]) -> None:
    """Stand-ins for every output, written stage by stage so each is newer than its inputs."""
    weights = ws.parent / "weights.safetensors"
    weights.write_bytes(b"\0" * 1024)
    r = ws / "results"
    for m in models(n):
        _write(r / f"download/{m}/manifest.json", json.dumps({
            "model": m, "repo": f"bench/{m}", "revision": "main", "commit": "0" * 40, "status": "ok",
            "format": "safetensors", "source": str(weights.parent), "total_bytes": 1024,
            "files": [{"name": weights.name, "path": str(weights), "size": 1024, "sha256": "0" * 64}]}))
    for stage in ("apr", "convert", "validate", "gates/validate", "evaluate", "gates/evaluate", "certify"):
        for m in models(n):
            for v in variants:
                if stage == "apr":
                    apr = r / f"apr/{m}/{m}.{v}.apr"
                    _write(apr, f"{m} {v}")
                    digest = hashlib.sha256(apr.read_bytes()).hexdigest()
                    _write(r / f"apr/{m}/{m}.{v}.apr.sha256.json", json.dumps({"path": str(apr), "sha256": digest}))
                elif stage.startswith("gates/"):
                    _write(r / f"{stage}/{m}/{v}.ok", "")
                else:
                    _write(r / f"{stage}/{m}/{v}.json", json.dumps({"gates": []}))
        time.sleep(0.01)  # distinct mtimes between stages
    _write(r / "report.md", "stand-in\n")


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plan(ws: Path, *args: str) -> tuple[float, float, int]:
    """Wall and CPU seconds of one `snakemake -n` (process start included), and the jobs it would run.

    CPU seconds are the steadier figure on a shared machine: wall time grows with the load."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SNAKEMAKE"))}
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", *args]
    start, cpu = time.perf_counter(), _child_cpu()
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _child_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed in {ws}:\n{proc.stderr[-3000:]}")
    out = proc.stdout + proc.stderr
    total = re.search(r"^total\s+(\d+)", out, re.M)
    return seconds, cpu, int(total.group(1)) if total else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--keep", type=Path, help="build the workspaces here and keep them")
    args = ap.parse_args()
    variants = args.variants.split(",")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_dag_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        ws = workspace(root, args.models, variants)
        profile = ("--workflow-profile", "profiles/slurm")
        rows = [("apr-qa fresh (downloads only)", *plan(ws, *profile))]
        fake_built_state(ws, args.models, variants)
        rows.append(("apr-qa no-op (full DAG, complete)", *plan(ws, *profile)))
        os.utime(ws / PROMPTS)  # newer than every evaluation
        rows.append(("apr-qa re-eval (prompts changed)", *plan(ws, *profile)))

        peer = root / "peer"
        peer.mkdir()
        (peer / "Snakefile").write_text(PEER_SNAKEFILE)
        (peer / "config.yaml").write_text(json.dumps({"n": args.models, "variants": variants}))
        rows.append(("peer: bare Snakefile, same shape", *plan(peer, "--configfile", "config.yaml")))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    # download per model; convert, validate, 2 gates, evaluate, certify per variant; report; all.
    dag_jobs = args.models * (1 + 6 * len(variants)) + 2
    print(f"snakemake -n, {args.models} models x {len(variants)} variants ({','.join(variants)}): "
          f"{dag_jobs} jobs in the complete DAG")
    print(f"{'state':<36} {'wall s':>8} {'CPU s':>8} {'jobs to run':>12}")
    for name, seconds, cpu, jobs in rows:
        print(f"{name:<36} {seconds:>8.2f} {cpu:>8.2f} {jobs:>12}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
