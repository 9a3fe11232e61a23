"""The workflow's layout: its stages, the variants it builds and every artifact's path under the
results folder. The Snakefile's rules, the commands and the report all name files through this
module (docs/layout.md lists the same table).

Variants come from the quantization registry (apr_qa.dtypes.QUANT_LEVELS): adding a level there
adds it to the workflow's wildcard constraint, the config schemas (`apr-qa sync-generated`) and
the stack fingerprints.
"""

from __future__ import annotations

import re
from pathlib import Path

from .dtypes import QUANT_LEVELS

# The stages of one variant's line, in order, and the artifact each one leaves (the Andon board's
# columns). The gated stages have a gate job after them that touches a marker when they passed.
STAGES = ("download", "convert", "validate", "evaluate")
GATED_STAGES = ("validate", "evaluate")

# The evidence a gated stage writes, which its gate job reads: validate/... or evaluate/...
GATED_EVIDENCE = "{stage}/{model}/{variant}.json"

# Artifact templates relative to the results folder. Wildcards: {model}, {variant}, {stage}, {stack}.
ARTIFACTS: dict[str, str] = {
    "manifest": "download/{model}/manifest.json",  # download: files, sha256s, commit, status
    "download_failure": "download/{model}/manifest.failed.json",  # a failed download's D3/D4 records, as measured
    "apr": "apr/{model}/{model}.{variant}.apr",  # convert: the artifact
    "apr_record": "apr/{model}/{model}.{variant}.apr.sha256.json",  # convert: its size and sha256
    "conversion": "convert/{model}/{variant}.json",  # convert: timings, parameter count, gates
    "validation": GATED_EVIDENCE.replace("{stage}", "validate"),  # validate: evidence (C*, V*, I-2..I-4)
    "evaluation": GATED_EVIDENCE.replace("{stage}", "evaluate"),  # evaluate: evidence (T*, I-1, I-5), metrics
    "marker": "gates/{stage}/{model}/{variant}.ok",  # the stage's gates passed
    "summary": "summary/{model}/{variant}.json",  # the variant's status across the stages
    "certification": "certify/{model}/evidence.json",  # the model's certification (tier playbook)
    "stack_certification": "certify/{model}/stacks/{stack}.json",  # the same, on another stack (docs/stacks.md)
    "oracle": "oracle/{model}.json",  # gate O1: our runtime vs transformers on the source
    "oracle_failure": "oracle/{model}.failed.json",  # a failed O1's record (the job's own output is removed)
    "golden_reference": "reference/{model}/golden.npz",  # the reference on the golden prompts, once per model
    "corpus_reference": "corpus/{model}/reference.npz",  # the reference's log-probs on the corpus, once per model
    "stack_evaluation": "stacks/{model}/{variant}/{stack}.json",  # evaluate on another stack (docs/stacks.md)
    "stack_logits": "stacks/{model}/{variant}/{stack}.logits.npz",  # per-token logits (builtin's too): diff input
    "differential": "differential/{model}/{variant}/{stack}.json",  # diff-stacks builtin vs {stack} (gate X1)
    "andon": "andon",  # Andon state: events/<stage>/<subject>.json, STOP
    "report": "report.md",
    "report_html": "report.html",
    "models_csv": "models.csv",
    "junit": "junit.xml",
    "pareto_png": "pareto.png",
    "pareto_svg": "pareto.svg",
    "kld_png": "kld.png",  # KLD and same-top-1 of each variant against its reference
    "kld_svg": "kld.svg",
    "corpus_kld_png": "corpus_kld.png",  # the per-token KLD distribution of each variant on the corpus
    "corpus_kld_svg": "corpus_kld.svg",
    "latency_png": "latency.png",  # each variant's request latencies over the evaluation's runs
    "latency_svg": "latency.svg",
    "checksum_cache": ".checksums",
}

# The artifact each stage's command writes (what the board reads for that stage's colour).
STAGE_OUTPUT = {"download": "manifest", "convert": "conversion", "validate": "validation", "evaluate": "evaluation"}


def template(results: str | Path, name: str) -> str:
    """The artifact's path template under `results`, wildcards left in (for Snakemake rules)."""
    return f"{results}/{ARTIFACTS[name]}"


def path(results: str | Path, name: str, **wildcards: str) -> Path:
    """One artifact's path."""
    return Path(results) / ARTIFACTS[name].format(**wildcards)


def log(results: str | Path, job: str, *parts: str) -> str:
    """A job's log: logs/<job>/<part>/.../<last part>.log (parts may be Snakemake wildcards, "{model}")."""
    return f"{results}/logs/{'/'.join((job, *parts))}.log"


def code_record(log_path: str) -> str:
    """The record of the code a job loaded (apr_qa.workflow.fingerprint), named after its log:
    logs/<job>/.../<last part>.log -> .code/<job>/.../<last part>.json."""
    head, sep, tail = log_path.rpartition("/logs/")
    if not sep or not tail.endswith(".log"):
        raise ValueError(f"{log_path}: not a job log (<results>/logs/.../<name>.log)")
    return f"{head}/.code/{tail.removesuffix('.log')}.json"


def benchmark(results: str | Path, job: str, *parts: str) -> str:
    """A job's Snakemake benchmark table: benchmarks/<job>/<part>/.../<last part>.tsv."""
    return f"{results}/benchmarks/{'/'.join((job, *parts))}.tsv"


def variant_files(results: Path, model: str, variant: str) -> dict[str, Path]:
    """Every per-variant artifact of one model/variant, by name (markers by stage: marker_<stage>)."""
    files = {name: path(results, name, model=model, variant=variant)
             for name in ("manifest", "apr", "apr_record", "conversion", "validation", "evaluation", "summary")}
    for stage in GATED_STAGES:
        files[f"marker_{stage}"] = path(results, "marker", stage=stage, model=model, variant=variant)
    return files


# -- variants --------------------------------------------------------------------------------------

VARIANTS: tuple[str, ...] = tuple(QUANT_LEVELS)


def variant_pattern() -> str:
    """The regex of a variant name (the workflow's wildcard constraint)."""
    return "|".join(re.escape(v) for v in VARIANTS)
