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
#
# Tiers. `tier` (config, or --config tier=NAME) selects config/playbooks/NAME.yaml. The playbook
# decides the variants built (its quantizations among the config's `variants`, up to max_variants),
# `apr-qa eval --runs` (runs_per_prompt) and --timeout (timeouts.scenario_s), the certification's
# scenarios and thresholds, and the failure policy. Precedence: a key set explicitly in the config
# (failure_policy, evaluation.runs; evaluation.extra_args comes last on the eval command line) >
# the tier playbook > built-in defaults (stop-on-p0, 5 runs). tier: null runs the gates only.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from apr_qa.certify.playbooks import load_playbook
from apr_qa.dtypes import QUANT_LEVELS
from apr_qa.workflow import checksums
from apr_qa.workflow.certify import ANDON_POLICY, certification_fingerprint, tier_variants
from apr_qa.workflow.download import weights_key
from apr_qa.workflow.fingerprint import fingerprint

RESULTS = config.get("results", "results")
REPORT = f"{RESULTS}/report.md"
ANDON = f"{RESULTS}/andon"
TIER = config.get("tier")
PLAYBOOK_FILE = f"config/playbooks/{TIER}.yaml" if TIER else None
PLAYBOOK = load_playbook(TIER, templates=Path("config/playbooks")) if TIER else None
POLICY = config.get("failure_policy") or (ANDON_POLICY[PLAYBOOK["failure_policy"]] if TIER else "stop-on-p0")
RUNS = config["evaluation"].get("runs") or (PLAYBOOK["test_matrix"]["runs_per_prompt"] if TIER else 5)
EVAL_TIMEOUT = f"--timeout {PLAYBOOK['timeouts']['scenario_s']:g}" if TIER else ""
MODELS = {m["id"]: m for m in config["models"]}
if not TIER and "variants" not in config:
    raise WorkflowError("config: `variants` is required without a tier")
SITE_VARIANTS = {m["id"]: m.get("variants", config.get("variants", list(QUANT_LEVELS))) for m in config["models"]}
VARIANTS = {m: tier_variants(PLAYBOOK, vs, m) if TIER else vs for m, vs in SITE_VARIANTS.items()}
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
CERTIFICATION = f"{RESULTS}/certify/{{model}}/evidence.json"
ORACLE = f"{RESULTS}/oracle/{{model}}.json"
ORACLE_ON = bool(config.get("oracle", False))
# Certification outputs of the report rule (with a tier); report.html is written in either mode.
REPORT_HTML = f"{RESULTS}/report.html"
MODELS_CSV, JUNIT = f"{RESULTS}/models.csv", f"{RESULTS}/junit.xml"
PARETO_PNG, PARETO_SVG = f"{RESULTS}/pareto.png", f"{RESULTS}/pareto.svg"


def cutoff(template):
    """Input: a checkpoint's output, ancient (a rerun upstream does not by itself trigger us)."""
    return ancient(template)


def digest(template, key=None):
    """Param: the content digest of that output; reruns us when, and only when, its bytes changed."""

    def par(wildcards):
        path = template.format(**dict(wildcards))
        if not os.path.exists(path):
            return "pending"
        return key(path) if key else file_sha256(path)

    return par


def per_file_version(read):
    """read(path), once per version of the file. Planning asks many jobs' params for the same
    manifest or digest; a checkpoint that rewrites the file changes its stat key (the checksum
    cache's: size, mtime, ctime, inode), so a re-evaluation after it reads the new bytes.
    Callers share the result: they must not modify it."""
    memo = {}

    def cached(path):
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if key not in memo:
            memo[key] = read(path)
        return memo[key]

    return cached


file_sha256 = per_file_version(checksums.sha256)


@per_file_version
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


def report_commands(certifications=None):
    """The Andon board (report.md/.html); with a tier first models.csv and junit.xml of the given
    certification files (default: every model's)."""
    board = (f"apr-qa report --results {RESULTS} --models {','.join(MODELS)} --variants {','.join(ALL_VARIANTS)} "
             f"--prompts {config['evaluation']['prompts']} --out {REPORT}")
    if certifications is None:
        certifications = [CERTIFICATION.format(model=m) for m in MODELS]
    if not (TIER and certifications):
        return [board]
    files = " ".join(certifications)
    return [f"rm -f {MODELS_CSV} && apr-qa export-csv {files} --output {MODELS_CSV}",
            f"apr-qa junit {files} --output {JUNIT}", board]


def write_report_after_failure():
    """After a failed run: BLOCKED certifications for the models whose tier variants the gates
    stopped (from their stage evidence), then the reports of whatever exists."""
    if TIER:
        from apr_qa.workflow.certify import certify_blocked

        for m in MODELS:
            try:
                certify_blocked(Path(RESULTS), m, MODELS[m]["repo"], PLAYBOOK, VARIANTS[m],
                                Path(CERTIFICATION.format(model=m)), family=MODELS[m].get("family"))
            except Exception as exc:  # best effort: the board must still be written
                print(f"certification of {m} after failure: {exc}", file=sys.stderr)
    existing = [CERTIFICATION.format(model=m) for m in MODELS if os.path.exists(CERTIFICATION.format(model=m))]
    for cmd in report_commands(existing):
        shell(cmd + " || true")


def certified_summaries(wildcards):
    """Summaries of every variant of every model its download did not skip."""
    return [ancient(SUMMARY.format(model=m, variant=v)) for m in MODELS if downloaded(m) for v in VARIANTS[m]]


def oracles(wildcards):
    """The runtime-oracle record of every downloaded model (none unless `oracle: true`)."""
    return [ORACLE.format(model=m) for m in MODELS if ORACLE_ON and downloaded(m)]


def certifications(wildcards):
    """Every certification of a model its download did not skip (none without a tier)."""
    return [CERTIFICATION.format(model=m) for m in MODELS if TIER and downloaded(m)]


def model_digest(wildcards):
    """Param: digests of everything a model's certification reads, per variant."""
    parts = []
    for v in VARIANTS[wildcards.model]:
        wc = {"model": wildcards.model, "variant": v}
        sha = APR_SHA.format(**wc)
        parts.append(recorded_sha256(sha) if os.path.exists(sha) else "pending")
        parts += [file_sha256(p) if os.path.exists(p) else "pending"
                  for p in (EVIDENCE.format(**wc), EVALUATION.format(**wc))]
    manifest = MANIFEST.format(model=wildcards.model)
    parts.append(weights_digest(manifest) if os.path.exists(manifest) else "pending")
    return ",".join(parts)


def summaries_digest(wildcards):
    paths = [SUMMARY.format(model=m, variant=v) for m in MODELS for v in VARIANTS[m]]
    return ",".join(file_sha256(p) if os.path.exists(p) else "pending" for p in paths)
