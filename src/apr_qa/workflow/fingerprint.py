"""Stack fingerprints: a hash of exactly the source files and library versions a stage's output depends on.

Each workflow rule carries its stage's fingerprint as a string param, so Snakemake reruns a job when
(and only when) that code or library changed. The stage lists are explicit rather than traced: a traced
import graph would pull in every quantizer for every variant (quant/__init__ imports them all),
while a q4_0 file depends only on the q4_0 codec; a variant's codec files are derived from the
quantization and codec registries (below). Each (stage, variant) is computed once per process:
planning asks for it from every job, and the code cannot change under a running Snakemake.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from importlib import metadata
from pathlib import Path

from ..dtypes import QUANT_LEVELS

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/apr_qa

CODEC_PACKAGE = "quant"
CODEC_COMMON = ["quant/__init__.py"]  # pads, chunks and dispatches every dtype
CORE = ["dtypes.py", "errors.py", "fsutil.py", "metadata.py", "native_build.py"]  # builds the C kernels
# The architecture registry decides names, layouts, quantization exemptions and the runtime graph of
# every family; all of it is hashed (an edit to one family reruns every model's conversion, never
# leaves one stale: which family a model is becomes known only after its download).
READERS = ["apr/", "sources/", "arch/"]
CONVERTER = ["convert.py", "commands/convert.py", *READERS, *CORE]

# `apr-qa eval` runs these for every stack; another stack's own module is in its stack fingerprint
STACK_HARNESS = ["stacks/__init__.py", "stacks/registry.py", "stacks/builtin.py", "stacks/evaluation.py",
                 "stacks/logits_file.py", "stacks/adapter.py"]

STAGES: dict[str, tuple[list[str], list[str], bool]] = {
    # stage: (files under src/apr_qa, distributions, depends on the variant's codec)
    "download": (["workflow/download.py", "workflow/checksums.py", "fsutil.py", "errors.py"], ["huggingface_hub"],
                 False),
    "convert": (CONVERTER, ["numpy", "gguf", "safetensors"], True),
    "validate": (["validate.py", "precision.py", "evidence.py", "gate_catalogue.py", "layout.py", *CONVERTER],
                 ["numpy", "gguf", "safetensors", "pyyaml"], True),
    "evaluate": (["runtime/", "evaluation/", "commands/evaluate.py", "evidence.py", *STACK_HARNESS, *READERS, *CORE],
                 ["torch", "numpy", "tokenizers", "gguf", "safetensors", "pyyaml", "scipy"], True),
    "corpus": (["runtime/", "evaluation/", "commands/evaluate.py", "yamlsafe.py", *READERS, *CORE],
               ["torch", "numpy", "tokenizers", "gguf", "safetensors", "pyyaml", "scipy"], False),
    "golden": (["runtime/", "evaluation/", "commands/evaluate.py", *READERS, *CORE],
               ["torch", "numpy", "tokenizers", "gguf", "safetensors", "pyyaml", "scipy"], False),
    "oracle": (["runtime/", "evaluation/oracle.py", "evaluation/prompts.py", "commands/oracle.py", *READERS, *CORE],
               ["torch", "transformers", "tokenizers", "gguf", "safetensors"], False),
    "diff": (["stacks/differential.py", "stacks/logits_file.py", "commands/stacks.py",
              "evaluation/logit_consistency.py", "evaluation/stats.py", "evidence.py"], ["numpy", "torch"], False),
    "gate": (["workflow/andon.py", "evidence.py"], [], False),
    "summarize": (["workflow/summary.py", "workflow/andon.py", "workflow/integrity.py", "layout.py", "evidence.py"],
                  [], False),
    "report": (["workflow/report.py", "workflow/summary.py", "workflow/blocked.py", "certify/", "commands/certify.py",
                "layout.py", "gate_catalogue.py", "stacks/report_section.py", "stacks/differential.py",
                "workflow/corpus_section.py"],
               ["tabulate", "matplotlib"], False),
}


def components(stage: str, variant: str | None = None) -> tuple[list[Path], dict[str, str]]:
    """The files (sorted) and distribution versions behind `stage` (for `variant`). A listed file
    that does not exist is an error: a fingerprint that silently skips a file misses its edits."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    entries, dists, per_variant = STAGES[stage]
    entries = list(entries)
    if per_variant:
        if variant not in QUANT_LEVELS:
            raise KeyError(f"stage {stage!r} needs a variant (one of {', '.join(QUANT_LEVELS)})")
        entries += CODEC_COMMON + variant_codec_files(variant)
    files: set[Path] = set()
    for entry in entries:
        path = PACKAGE_ROOT / entry
        if entry.endswith("/"):
            files.update(p for p in path.rglob("*") if p.suffix in (".py", ".c"))  # C kernels are code too
        elif path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(f"fingerprint of {stage}: {path} does not exist (workflow/fingerprint.py names it)")
    return sorted(files), {dist: _version(dist) for dist in dists}


# -- the codec files of a variant, derived from the registries -------------------------------------
# A variant's bytes go through the codec modules of every dtype its files may hold: its weights
# dtype, the dtypes its recipe module (QuantLevel.recipe) names, and the dtypes convert keeps
# instead of re-quantizing (KEPT_DTYPES). Each dtype's module is the one apr_qa/quant/__init__.py
# registers for it in _CODECS; the modules it imports from the package and the C sources it names
# (quant/native.py compiles quant/kernels.c) are hashed with it.

# convert.stored_dtype: a Q6_K source tensor asked to become Q4_K is copied as Q6_K.
KEPT_DTYPES: dict[str, tuple[str, ...]] = {"Q4_K": ("Q6_K",)}


@functools.cache
def _codec_modules() -> dict[str, str]:
    """DType name -> codec file, read from the `_CODECS` table of quant/__init__.py."""
    tree = ast.parse((PACKAGE_ROOT / CODEC_PACKAGE / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_CODECS" for t in targets):
                out = {}
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    assert isinstance(key, ast.Attribute) and isinstance(value, ast.Tuple)
                    encode = value.elts[0]
                    assert isinstance(encode, ast.Attribute) and isinstance(encode.value, ast.Name)
                    out[key.attr] = f"{CODEC_PACKAGE}/{encode.value.id}.py"
                return out
    raise FileNotFoundError(f"{PACKAGE_ROOT / CODEC_PACKAGE / '__init__.py'}: no _CODECS table")


def _dtype_names(source: str) -> set[str]:
    """The DType members a module names (DType.Q6_K, ...)."""
    return {n.attr for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "DType"}


def _with_dependencies(files: list[str]) -> set[str]:
    """`files`, the codec package's modules they import (quant/native.py, which loads the compiled
    kernels) and the C sources those name. Imports of the imported modules are not followed: native.py
    checks the compiled kernels against every numpy port, but a variant's bytes come from its own."""
    out = set(files)
    for rel in files:
        for node in ast.walk(ast.parse((PACKAGE_ROOT / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import x / from .x import y
                names = [node.module] if node.module else [a.name for a in node.names]
                out.update(f"{CODEC_PACKAGE}/{n}.py" for n in names
                           if (PACKAGE_ROOT / CODEC_PACKAGE / f"{n}.py").exists())
    for rel in list(out):
        out.update(f"{CODEC_PACKAGE}/{node.value}" for node in ast.walk(ast.parse((PACKAGE_ROOT / rel).read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".c"))
    return out


@functools.cache
def _variant_codec_files(variant: str) -> tuple[str, ...]:
    level = QUANT_LEVELS[variant]
    weights = level.weights.name
    dtypes = {weights, *KEPT_DTYPES.get(weights, ())}
    files = []
    if level.recipe:
        module = f"{CODEC_PACKAGE}/{level.recipe}.py"
        files.append(module)
        dtypes |= _dtype_names((PACKAGE_ROOT / module).read_text())
    codecs = _codec_modules()
    missing = sorted(d for d in dtypes if d not in codecs)
    if missing:
        raise KeyError(f"variant {variant!r}: no codec registered for {', '.join(missing)} in quant/__init__.py")
    files += [codecs[d] for d in sorted(dtypes)]
    return tuple(sorted(_with_dependencies(files)))


def variant_codec_files(variant: str) -> list[str]:
    """The codec files (relative to src/apr_qa) a variant's bytes depend on."""
    return list(_variant_codec_files(variant))


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
