"""A one-model workflow workspace for the crash and integrity tests: the tiny llama served from a
local HF cache (offline), two variants, one golden prompt, and a frozen copy of the package
(PYTHONPATH), so edits to the repository during a test session never change fingerprints between
runs. Snakemake runs with a PATH that does not contain the virtual environment's bin: the workflow
must find apr-qa by itself, as from a fresh shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The corpus evaluation of test workflows. Off where a test is about the workflow's mechanics: a random
# tiny model predicts real text no better than chance, so its Q1 is inconclusive (yellow) by design.
# TEST_CORPUS_ON: the real corpus definition, a few short windows (the default's 16k tokens would take
# minutes per variant), for the tests of the corpus rules themselves.
TEST_CORPUS = {"enabled": False}
TEST_CORPUS_ON = {"enabled": True, "definition": str(ROOT / "config" / "corpus" / "wiki-en-v1.yaml"), "tokens": 60,
                  "n_ctx": 32, "top_k": 8}
BIN = Path(sys.executable).parent
MODEL, REPO = "tiny-llama", "test/tiny-llama"
VARIANTS = ["f16", "q8_0"]
PROMPTS = """\
metadata: {version: "test-1"}
prompts:
  - {id: sanity-any, input: "hello world", expected_pattern: "(?s).*", category: sanity}
"""
BARE_PATH = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())


def env(src: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SNAKEMAKE", "VIRTUAL_ENV"))}
    out.update(PYTHONPATH=str(src), PATH=BARE_PATH, OMP_WAIT_POLICY="PASSIVE")
    return out


def hub_cache(root: Path, tiny_llama: Path) -> Path:
    """The tiny llama downloaded into an HF cache through the mirror (as build_local_hub.py does)."""
    from apr_qa.hub.mirror import HubMirror

    with HubMirror({REPO: tiny_llama}) as hub:
        run_env = dict(env(ROOT / "src"), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(root / "cache"))
        subprocess.run([str(BIN / "apr-qa"), "download", REPO, "--manifest", str(root / "m.json")],
                       env=run_env, check=True, capture_output=True)
    return root / "cache"


def frozen_src(root: Path) -> Path:
    shutil.copytree(ROOT / "src/apr_qa", root / "src/apr_qa", ignore=shutil.ignore_patterns("__pycache__"))
    return root / "src"


def workspace(ws: Path, cache: Path, src: Path) -> Path:
    ws.mkdir(parents=True)
    for name in ("Snakefile", "rules", "envs", "profiles"):
        (ws / name).symlink_to(ROOT / name)
    (ws / "config/prompts").mkdir(parents=True)
    shutil.copy(ROOT / "config/schema.yaml", ws / "config/schema.yaml")
    (ws / "config/prompts/test.yaml").write_text(PROMPTS)
    cfg = {
        "failure_policy": "stop-on-p0", "checksum_cache": "results/.checksums",
        "hub": {"cache_dir": str(cache), "offline": True, "endpoint": None},
        "download": {"max_size_gb": 10, "retries": 1}, "variants": VARIANTS,
        "corpus": TEST_CORPUS,
        "evaluation": {"prompts": "config/prompts/test.yaml", "runs": 1, "device": "cpu", "threads": 1,
                       "extra_args": "--max-new-tokens 2 --timeout 120"},
        "models": [{"id": MODEL, "repo": REPO}],
    }
    (ws / "config/config.yaml").write_text(json.dumps(cfg, indent=1))
    (ws / ".src").symlink_to(src)
    return ws


def snakemake_cmd(*args: str) -> list[str]:
    """`.venv/bin/snakemake` called by its path, as from a shell where the venv is not active."""
    return [str(BIN / "snakemake"), "--cores", "2", *args]


def snakemake(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_cmd(*args), cwd=ws, env=env((ws / ".src").resolve()),
                          capture_output=True, text=True)


def nothing_to_do(ws: Path) -> bool:
    proc = snakemake(ws, "-n")
    return proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
