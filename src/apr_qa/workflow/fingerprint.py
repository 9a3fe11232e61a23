"""Stack fingerprints: a hash of exactly the source files and library versions a stage's output depends on.

Each workflow rule carries its stage's fingerprint as a string param, so Snakemake reruns a job when
(and only when) that code or library changed. The lists are explicit rather than traced: a traced
import graph would pull in every quantizer for every variant (quant/__init__ imports them all),
while a q4_0 file depends only on the q4_0 codec. Each (stage, variant) is computed once per process:
planning asks for it from every job, and the code cannot change under a running Snakemake.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/apr_qa

# The compiled quantizers (Q4_0, Q4_K, Q6_K) and their loader: their bytes equal the numpy ports', but
# a change to them must still rebuild what they encoded.
NATIVE_QUANT = ["quant/kernels.c", "quant/native.py"]

# The codec modules each variant's bytes go through (encode in convert, decode in validate/evaluate).
# q4_k keeps Q6_K source tensors as Q6_K (convert.stored_dtype), so its files also hold q6_k blocks.
VARIANT_CODECS = {
    "f32": ["quant/floats.py"],
    "f16": ["quant/floats.py"],
    "bf16": ["quant/floats.py"],
    "q8_0": ["quant/q8_0.py"],
    "q4_0": ["quant/q4_0.py", *NATIVE_QUANT],
    "q4_k": ["quant/q4_k.py", "quant/q6_k.py", *NATIVE_QUANT],
}
CODEC_COMMON = ["quant/__init__.py", "quant/common.py"]
CORE = ["dtypes.py", "errors.py", "fsutil.py", "metadata.py", "native_build.py"]  # builds the C kernels
# The architecture registry decides names, layouts, quantization exemptions and the runtime graph of
# every family; all of it is hashed (an edit to one family reruns every model's conversion, never
# leaves one stale: which family a model is becomes known only after its download).
READERS = ["apr/", "sources/", "arch/"]
CONVERTER = ["convert.py", "commands/convert.py", *READERS, *CORE]

STAGES: dict[str, tuple[list[str], list[str], bool]] = {
    # stage: (files under src/apr_qa, distributions, depends on the variant's codec)
    "download": (["workflow/download.py", "workflow/checksums.py", "fsutil.py", "errors.py"], ["huggingface_hub"], False),
    "convert": (CONVERTER, ["numpy", "gguf", "safetensors"], True),
    "validate": (["validate.py", "precision.py", "evidence.py", *CONVERTER], ["numpy", "gguf", "safetensors", "pyyaml"], True),
    "evaluate": (["runtime/", "evaluation/", "commands/evaluate.py", "evidence.py", *READERS, *CORE],
                 ["torch", "numpy", "tokenizers", "gguf", "safetensors", "pyyaml", "scipy"], True),
    "oracle": (["runtime/", "evaluation/oracle.py", "evaluation/prompts.py", "commands/oracle.py", *READERS, *CORE],
               ["torch", "transformers", "tokenizers", "gguf", "safetensors"], False),
    "gate": (["workflow/andon.py", "evidence.py"], [], False),
    "certify": (["workflow/certify.py", "evidence.py"], [], False),
    "report": (["workflow/report.py", "workflow/certify.py", "certify/", "commands/certify.py"],
               ["tabulate", "matplotlib"], False),
}


def components(stage: str, variant: str | None = None) -> tuple[list[Path], dict[str, str]]:
    """The files (existing ones, sorted) and distribution versions behind `stage` (for `variant`)."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    entries, dists, per_variant = STAGES[stage]
    entries = list(entries)
    if per_variant:
        if variant not in VARIANT_CODECS:
            raise KeyError(f"stage {stage!r} needs a variant (one of {', '.join(VARIANT_CODECS)})")
        entries += CODEC_COMMON + VARIANT_CODECS[variant]
    files: set[Path] = set()
    for entry in entries:
        path = PACKAGE_ROOT / entry
        if entry.endswith("/"):
            files.update(p for p in path.rglob("*") if p.suffix in (".py", ".c"))  # C kernels are code too
        elif path.exists():
            files.add(path)
    return sorted(files), {dist: _version(dist) for dist in dists}


@functools.cache
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def _file_digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


@functools.cache
def fingerprint(stage: str, variant: str | None = None) -> str:
    """`<stage>:<16 hex>` over the files' relative paths and contents and the versions."""
    files, versions = components(stage, variant)
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
        h.update(_file_digest(path))
    for dist, version in sorted(versions.items()):
        h.update(f"{dist}=={version}\0".encode())
    return f"{stage}:{h.hexdigest()[:16]}"
