# Shared settings and helpers.
#
# Early cutoff. Snakemake reruns every job downstream of a rerun job, even when the new output is
# byte-identical. Here each producing stage is a checkpoint and each consumer takes the producer's
# output as ancient() input (so a rerun upstream does not by itself trigger it) plus a param that
# is the *content digest* of that output. When a checkpoint finishes, Snakemake re-evaluates its
# consumers and recomputes their params: a changed digest reruns them, an identical one does not.
# Digests of large files come from the stat-keyed checksum cache (apr_qa.workflow.checksums), which
# the producing rule fills, so planning never rehashes an unchanged .apr.
#
# Stack changes. Each rule's params carry the fingerprint of exactly the code and library versions
# its output depends on (apr_qa.workflow.fingerprint), as plain strings so Snakemake's params
# trigger sees them.
#
# Andon. Heavy stages run under `apr-qa andon run`, which refuses to start while the line is stopped
# and records why a command failed. Validate/evaluate always write their evidence; a separate gate
# rule fails (fail/halt levels) or touches a marker. Downstream stages need the markers, so a tripped
# gate skips that model/variant; with keep-going the rest continue. The failure policy decides
# which levels stop the line (results/andon/STOP).
import json
import os
from pathlib import Path

from apr_qa.workflow import checksums
from apr_qa.workflow.download import weights_key
from apr_qa.workflow.fingerprint import fingerprint

RESULTS = config.get("results", "results")
REPORT = f"{RESULTS}/report.md"
ANDON = f"{RESULTS}/andon"
POLICY = config.get("failure_policy", "stop-on-p0")
MODELS = {m["id"]: m for m in config["models"]}
VARIANTS = {m["id"]: m.get("variants", config["variants"]) for m in config["models"]}
ALL_VARIANTS = sorted({v for vs in VARIANTS.values() for v in vs})
HUB = config.get("hub", {})
TOLERANCES = config.get("validation", {}).get("tolerances") or []  # optional YAML for `apr-qa validate`

# The environment every job inherits: checksum cache, HF hub location/mode. HF_TOKEN passes through
# untouched from the caller's environment and is never written anywhere.
JOB_ENV = {checksums.CACHE_ENV: os.path.abspath(config.get("checksum_cache", f"{RESULTS}/.checksums"))}
if HUB.get("cache_dir"):
    JOB_ENV["HF_HUB_CACHE"] = os.path.abspath(HUB["cache_dir"])
if HUB.get("endpoint"):
    JOB_ENV["HF_ENDPOINT"] = HUB["endpoint"]
if HUB.get("offline"):
    JOB_ENV["HF_HUB_OFFLINE"] = "1"
os.environ.update(JOB_ENV)

wildcard_constraints:
    model="|".join(MODELS) or "(?!)",
    variant="f32|f16|bf16|q8_0|q4_0|q4_k",
    stage="validate|evaluate",


def andon(stage, subject, evidence=None):
    """Prefix that runs a stage command under the andon cord."""
    ev = f" --evidence {evidence}" if evidence else ""
    return f"apr-qa andon run --stage {stage} --subject {subject} --state {ANDON} --policy {POLICY}{ev} --"


# Artifact paths. Consumers name them directly (not through checkpoints.X.get(), which in an
# input function that loops over many checkpoints surfaces only one pending checkpoint per DAG
# update); Snakemake still re-plans every direct dependent of a checkpoint when it finishes.
MANIFEST = f"{RESULTS}/download/{{model}}/manifest.json"
APR = f"{RESULTS}/apr/{{model}}/{{model}}.{{variant}}.apr"
APR_SHA = f"{RESULTS}/apr/{{model}}/{{model}}.{{variant}}.apr.sha256.json"
CONVERSION = f"{RESULTS}/convert/{{model}}/{{variant}}.json"
EVIDENCE = f"{RESULTS}/validate/{{model}}/{{variant}}.json"
EVALUATION = f"{RESULTS}/evaluate/{{model}}/{{variant}}.json"
MARKER = f"{RESULTS}/gates/{{stage}}/{{model}}/{{variant}}.ok"
SUMMARY = f"{RESULTS}/certify/{{model}}/{{variant}}.json"


def cutoff(template):
    """Input: a checkpoint's output, ancient (a rerun upstream does not by itself trigger us)."""
    return ancient(template)


def digest(template, key=None):
    """Param: the content digest of that output; reruns us when, and only when, its bytes changed."""

    def par(wildcards):
        path = template.format(**dict(wildcards))
        if not os.path.exists(path):
            return "pending"
        return key(path) if key else checksums.sha256(path)

    return par


def read_json(path):
    with open(path) as f:
        return json.load(f)


def recorded_sha256(path):
    """The artifact's sha256 as its producer recorded it: survives eviction of the artifact itself."""
    return read_json(path)["sha256"]


def weights_digest(path):
    return weights_key(read_json(path))


def source_of(wildcards):
    """Param: the path the converter reads (the snapshot folder, or the GGUF file)."""
    path = MANIFEST.format(model=wildcards.model)
    return read_json(path).get("source", "skipped") if os.path.exists(path) else "pending"


def downloaded(model):
    """True when the model was fetched, False when its download skipped it (D1/D2/G6).
    Raises IncompleteCheckpointException while the download is pending."""
    return read_json(checkpoints.download.get(model=model).output.manifest).get("status") == "ok"


def mem_mb(stage):
    """Memory per job from the model's size: base + factor x source MB (config `memory`)."""
    mem = config.get("memory", {})

    def resource(wildcards, attempt):
        path = MANIFEST.format(model=wildcards.model)
        size_mb = read_json(path).get("total_bytes", 0) / 1e6 if os.path.exists(path) else 0
        return int(mem.get("base_mb", 1024) + mem.get(stage, 1.0) * size_mb * attempt)

    return resource


def pickle_flag(model):
    return "--unsafe-allow-pickle" if MODELS[model].get("allow_pickle") else ""


def report_command():
    return (f"apr-qa report --results {RESULTS} --models {','.join(MODELS)} --variants {','.join(ALL_VARIANTS)} "
            f"--prompts {config['evaluation']['prompts']} --out {REPORT}")


def write_report_after_failure():
    shell(report_command() + " || true")


def certified_summaries(wildcards):
    """Summaries of every variant of every model its download did not skip."""
    return [ancient(SUMMARY.format(model=m, variant=v)) for m in MODELS if downloaded(m) for v in VARIANTS[m]]


def summaries_digest(wildcards):
    paths = [SUMMARY.format(model=m, variant=v) for m in MODELS for v in VARIANTS[m]]
    return ",".join(checksums.sha256(p) if os.path.exists(p) else "pending" for p in paths)
