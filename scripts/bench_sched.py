"""How much CPU the Snakemake process itself takes in a real run, next to the CPU of its jobs.

Each finished checkpoint makes Snakemake re-plan its dependents; with many models that planning can
take a large share of a small machine. This runs the real workflow, fresh, on N deterministic tiny
llamas (hidden 64, 2 layers; served offline from a local HuggingFace cache) with the given variants
and tier, then the no-op run after it, and prints the Snakemake process's own CPU seconds against
its jobs'. Tiny models make the jobs as cheap as jobs get, so the share printed is an upper bound of
what a run on real models spends on scheduling.

    python scripts/bench_sched.py                        # 4 models x f16,bf16,q8_0, tier quick
    python scripts/bench_sched.py --models 8 --tier none # gates only
    python scripts/bench_sched.py --real smollm2-135m    # the default config's real model(s) instead
                                                         # (needs `make hub`; tier, variants, stacks as configured)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/helpers"))  # the tests' deterministic tiny-model builder

# Runs Snakemake in this child process and writes the child's own CPU seconds (its threads included,
# its jobs' processes not) at exit.
SELF_CPU = (
    "import atexit, json, resource, sys\n"
    "out = sys.argv[1]\n"
    "def _cpu():\n"
    "    u = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    open(out, 'w').write(json.dumps(u.ru_utime + u.ru_stime))\n"
    "atexit.register(_cpu)\n"
    "from snakemake.cli import main\n"
    "sys.argv = ['snakemake'] + sys.argv[2:]\n"
    "main()\n"
)


# Random tiny weights answer nothing right: one prompt that any output matches keeps every gate green,
# so the whole DAG runs (the golden set's checks are not what this measures).
PROMPTS = """\
metadata: {version: "bench-1"}
prompts:
  - {id: sanity-any, input: "hello world", expected_pattern: "(?s).*", category: sanity}
"""


def hub_cache(root: Path, n: int) -> list[tuple[str, str]]:
    """n tiny llamas (distinct seeds) downloaded into root/hf-cache through the hub mirror."""
    from tiny_models import make_tiny_llama

    from apr_qa.hub.mirror import HubMirror

    repos = {f"bench/tiny-{i}": make_tiny_llama(root / f"src/tiny-{i}", seed=i) for i in range(n)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubMirror(repos) as hub:
        for repo in repos:
            subprocess.run(
                [str(Path(sys.executable).parent / "apr-qa"), "download", repo, "--manifest", str(root / "m.json")],
                env=dict(env, HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(root / "hf-cache")),
                check=True,
                capture_output=True,
            )
    return [(repo.split("/")[1], repo) for repo in repos]


def workspace(root: Path, models: list[tuple[str, str]], variants: list[str], tier: str | None) -> Path:
    ws = root / "workflow"
    ws.mkdir()
    for name in ("Snakefile", "rules", "envs", "profiles"):
        (ws / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "config", ws / "config", ignore=shutil.ignore_patterns("config.yaml"))
    (ws / "config/prompts/bench.yaml").write_text(PROMPTS)
    cfg = {
        "tier": tier,
        "checksum_cache": "results/.checksums",
        "hub": {"cache_dir": str(root / "hf-cache"), "offline": True, "endpoint": None},
        "variants": variants,
        "stacks": ["builtin"],
        "evaluation": {"prompts": "config/prompts/bench.yaml", "runs": 1, "device": "cpu", "threads": 1,
                       "extra_args": "--max-new-tokens 4"},
        "models": [{"id": mid, "repo": repo, "family": "llama"} for mid, repo in models],
    }
    (ws / "config/config.yaml").write_text(json.dumps(cfg, indent=1))
    return ws


def real_workspace(root: Path, ids: list[str]) -> Path:
    """The repository's own config, keeping only the named models (their hub cache, prompts, tier)."""
    import yaml

    ws = root / "workflow"
    ws.mkdir()
    for name in ("Snakefile", "rules", "envs", "profiles", "models"):
        (ws / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "config", ws / "config")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    unknown = set(ids) - {m["id"] for m in cfg["models"]}
    if unknown:
        sys.exit(f"config/config.yaml has no model {', '.join(sorted(unknown))}")
    cfg["models"] = [m for m in cfg["models"] if m["id"] in ids]
    cfg["model_cache"] = {**cfg.get("model_cache", {}), "evict_after_certify": False}  # keep the shared hub
    (ws / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ws


def run(ws: Path, *args: str) -> tuple[float, float, float]:
    """Wall seconds, the Snakemake process's own CPU seconds, and its jobs' CPU seconds."""
    cpu_file = ws / ".snakemake-cpu.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SNAKEMAKE"))}
    proc = subprocess.run([sys.executable, "-c", SELF_CPU, str(cpu_file), "--cores", "2", *args],
                          cwd=ws, env=dict(env, OMP_WAIT_POLICY="PASSIVE"), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"snakemake failed in {ws}:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    own = json.loads(cpu_file.read_text())
    return wall, own, total - own


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--variants", default="f16,bf16,q8_0")
    ap.add_argument("--tier", default="quick", help="a playbook name, or none (gates only)")
    ap.add_argument("--real", help="comma-separated model ids of config/config.yaml to run instead of tiny llamas")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    args = ap.parse_args()
    tier = None if args.tier == "none" else args.tier
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_sched_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.real:
            ws = real_workspace(root, args.real.split(","))
            what = f"{args.real} as configured in config/config.yaml"
        else:
            ws = workspace(root, hub_cache(root, args.models), args.variants.split(","), tier)
            what = f"{args.models} tiny llamas x {args.variants}, tier {args.tier}"
        rows = [("fresh run", *run(ws)), ("no-op run", *run(ws))]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"snakemake --cores 2, {what}")
    print(f"{'run':<12} {'wall s':>8} {'snakemake CPU s':>16} {'jobs CPU s':>11} {'snakemake share':>16}")
    for name, wall, own, jobs in rows:
        print(f"{name:<12} {wall:>8.1f} {own:>16.1f} {jobs:>11.1f} {own / (own + jobs):>16.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
