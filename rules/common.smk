# Shared settings and helpers.
#
# Config, artifact paths and the input and param functions the rules share; the logic behind them
# lives in the package (docs/rebuild.md explains the mechanisms):
#
# Early cutoff. Each producing stage is a checkpoint; each consumer takes the producer's output as
# ancient() input plus a param holding its content digest (apr_qa.workflow.cutoff), so a rerun that
# writes the same bytes cascades no further.
#
# Code changes. Every job records the package files, C sources and library versions its apr-qa
# processes loaded; its `code` param is their digest (apr_qa.workflow.fingerprint, docs/rebuild.md),
# so Snakemake's params trigger reruns exactly the jobs that loaded an edited file.
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
# (failure_policy, evaluation.runs; evaluation.extra_args, run options, comes last on the golden
# reference's and the evaluations' command lines, so that their runs pair) >
# the tier playbook > built-in defaults (stop-on-p0, 5 runs). tier: null runs the gates only.
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import apply_wildcards

from apr_qa import layout
from apr_qa.certify.playbooks import load_playbook
from apr_qa.stacks import configured_stacks, stack_fingerprint
from apr_qa.workflow import checksums, fingerprint, integrity, lifecycle
from apr_qa.workflow.tiers import ANDON_POLICY, tier_variants
from apr_qa.workflow.cutoff import digest, digest_or_pending, read_json, recorded_sha256, weights_digest

RESULTS = config["results"]
REPORT = layout.template(RESULTS, "report")
ANDON = layout.template(RESULTS, "andon")
TIER = config.get("tier")
PLAYBOOK_FILE = f"config/playbooks/{TIER}.yaml" if TIER else None
PLAYBOOK = load_playbook(TIER, templates=Path("config/playbooks")) if TIER else None
POLICY = config.get("failure_policy") or (ANDON_POLICY[PLAYBOOK["failure_policy"]] if TIER else "stop-on-p0")
RUNS = config["evaluation"].get("runs") or (PLAYBOOK["test_matrix"]["runs_per_prompt"] if TIER else 5)
EVAL_TIMEOUT = f"--timeout {PLAYBOOK['timeouts']['scenario_s']:g}" if TIER else ""
MODELS = {m["id"]: m for m in config["models"]}
if not TIER and "variants" not in config:
    raise WorkflowError("config: `variants` is required without a tier")
SITE_VARIANTS = {m["id"]: m.get("variants", config.get("variants", list(layout.VARIANTS))) for m in config["models"]}
VARIANTS = {m: tier_variants(PLAYBOOK, vs, m) if TIER else vs for m, vs in SITE_VARIANTS.items()}
ALL_VARIANTS = sorted({v for vs in VARIANTS.values() for v in vs})
HUB = config["hub"]
TOLERANCES = config["validation"]["tolerances"] or []  # optional YAML for `apr-qa validate`: an input

# The environment every job inherits: checksum cache, HF hub location/mode. HF_TOKEN passes through
# untouched from the caller's environment and is never written anywhere.
JOB_ENV = {checksums.CACHE_ENV: os.path.abspath(config["checksum_cache"])}
if HUB.get("cache_dir"):
    JOB_ENV["HF_HUB_CACHE"] = os.path.abspath(HUB["cache_dir"])
if HUB.get("endpoint"):
    JOB_ENV["HF_ENDPOINT"] = HUB["endpoint"]
if HUB.get("offline"):
    JOB_ENV["HF_HUB_OFFLINE"] = "1"
JOB_ENV["APR_QA_MODEL_CACHE"] = json.dumps(config.get("model_cache") or {})  # apr_qa.hub.model_cache
# envs/apr-qa.yaml installs the package from here: Snakemake builds the environment from a copy of the
# file under .snakemake/conda/, where a relative path would not name the repository.
JOB_ENV["APR_QA_ROOT"] = os.path.abspath(workflow.basedir)
os.environ.update(JOB_ENV)

# Jobs run the apr-qa of the Python environment that runs Snakemake, so `.venv/bin/snakemake` from a
# bare shell, an activated venv and `make report` behave the same (a --use-conda job's own env still
# comes first). Without an apr-qa there, every job would fail with "command not found": stop now.
PYTHON_BIN = os.path.dirname(sys.executable)
SEARCH_PATH = os.environ.get("PATH", "")
if SEARCH_PATH.split(os.pathsep)[0] != PYTHON_BIN:
    os.environ.update(PATH=PYTHON_BIN + os.pathsep + SEARCH_PATH)
if shutil.which("apr-qa") is None:
    raise WorkflowError(
        f"apr-qa is neither beside {sys.executable} nor on PATH: install apr-qa into the "
        "Python environment that runs Snakemake (make setup)"
    )


wildcard_constraints:
    model="|".join(MODELS) or "(?!)",
    variant=layout.variant_pattern(),
    stage="|".join(layout.GATED_STAGES),


def code(rule):
    """Param of every rule, first in its shell: the job's code fingerprint, and the environment that
    makes its apr-qa processes record what they load (beside the job's log, under .code/)."""

    def param(wildcards):
        record = code_record(rule, wildcards)
        return fingerprint.job_env(record, fingerprint.plan_key(rule, record))

    return param


def code_record(rule, wildcards):
    """Where the job of `rule` for these wildcards records its code: named after its log."""
    return layout.code_record(apply_wildcards(workflow.get_rule(rule).log[0], wildcards))


def job_code_keys(rule, wildcards):
    """The code fingerprint of another job (for a record that names what produced it)."""
    return fingerprint.plan_key(rule, code_record(rule, wildcards))


def andon(stage, subject, evidence=None):
    """Prefix that runs a stage command under the andon cord."""
    ev = f" --evidence {evidence}" if evidence else ""
    return f"apr-qa andon run --stage {stage} --subject {subject} --state {ANDON} --policy {POLICY}{ev} --"


# Artifact paths (apr_qa.layout). Consumers name them directly (not through checkpoints.X.get(),
# which in an input function that loops over many checkpoints surfaces only one pending checkpoint
# per DAG update); Snakemake still re-plans every direct dependent of a checkpoint when it finishes.
MANIFEST = layout.template(RESULTS, "manifest")
APR = layout.template(RESULTS, "apr")
APR_SHA = layout.template(RESULTS, "apr_record")
CONVERSION = layout.template(RESULTS, "conversion")
EVIDENCE = layout.template(RESULTS, "validation")
EVALUATION = layout.template(RESULTS, "evaluation")
MARKER = layout.template(RESULTS, "marker")
VALIDATED = MARKER.replace("{stage}", "validate")
EVALUATED = MARKER.replace("{stage}", "evaluate")
SUMMARY = layout.template(RESULTS, "summary")
CERTIFICATION = layout.template(RESULTS, "certification")
STACK_CERTIFICATION = layout.template(RESULTS, "stack_certification")  # another stack's (rule certify_stack)
ORACLE = layout.template(RESULTS, "oracle")
ORACLE_ON = config["oracle"]


def oracle_input(wildcards):
    """Input: the model's O1 record, when the oracle is on: the references wait for the runtime's check
    (ancient: a rerun oracle that passes again does not by itself recompute them)."""
    return ancient(ORACLE.format(model=wildcards.model)) if ORACLE_ON else []


GOLDEN_REFERENCE = layout.template(RESULTS, "golden_reference")
CORPUS = config["corpus"]  # defaults filled in by the schema (config/schema.yaml)
CORPUS_REFERENCE = layout.template(RESULTS, "corpus_reference")
CORPUS_ON = CORPUS["enabled"]
QUALITY_TARGET = f"--quality-target {CORPUS['quality_target']}" if CORPUS.get("quality_target") is not None else ""


def corpus_input(wildcards):
    """Input: the model's corpus reference, when the corpus evaluation is on."""
    return ancient(CORPUS_REFERENCE.format(model=wildcards.model)) if CORPUS_ON else []


def corpus_args(wildcards, input):
    """Param: `apr-qa eval`'s corpus options ("" when the corpus evaluation is off)."""
    return f"--corpus-reference {input.corpus} {QUALITY_TARGET}" if CORPUS_ON else ""


# Stacks under test (docs/stacks.md): builtin is the evaluate checkpoint; every other stack is one
# evaluate_stack job per variant plus its diff_stacks comparison with builtin (rules/stacks.smk).
STACKS, STACK_NOTES = configured_stacks(config.get("stacks"), "config: stacks")
for _note in STACK_NOTES:  # e.g. llamacpp omitted where llama-cpp-python does not import
    print(f"apr-qa: {_note}", file=sys.stderr)
OTHER_STACKS = {s.name: s for s in STACKS if s.name != "builtin"}
STACK_EVALUATION = layout.template(RESULTS, "stack_evaluation")
STACK_LOGITS = layout.template(RESULTS, "stack_logits")
BUILTIN_LOGITS = STACK_LOGITS.replace("{stack}", "builtin")
DIFFERENTIAL = layout.template(RESULTS, "differential")
# Certification outputs of the report rule (with a tier); report.html is written in either mode.
REPORT_HTML = layout.template(RESULTS, "report_html")
MODELS_CSV, JUNIT = layout.template(RESULTS, "models_csv"), layout.template(RESULTS, "junit")
PARETO_PNG, PARETO_SVG = layout.template(RESULTS, "pareto_png"), layout.template(RESULTS, "pareto_svg")


GATED = f"{RESULTS}/{layout.GATED_EVIDENCE}"  # EVIDENCE or EVALUATION, by the gate's {stage}


def cutoff(template):
    """Input: a checkpoint's output, ancient (a rerun upstream does not by itself trigger us); its
    consumer carries `digest(template)` as a param (apr_qa.workflow.cutoff)."""
    return ancient(template)


def source_of(wildcards):
    """Param: the path the converter reads (the snapshot folder, or the GGUF file)."""
    path = MANIFEST.format(model=wildcards.model)
    return read_json(path).get("source", "skipped") if os.path.exists(path) else "pending"


def downloaded(model):
    """True when the model was fetched, False when its download skipped it (D1/D2/G6).
    Raises IncompleteCheckpointException while the download is pending. A manifest deleted after
    its model was converted counts as fetched: the report's integrity param has it rebuilt."""
    manifest = MANIFEST.format(model=model)
    if not os.path.exists(manifest) and any(
        os.path.exists(APR_SHA.format(model=model, variant=v)) for v in VARIANTS[model]
    ):
        return True
    return read_json(checkpoints.download.get(model=model).output.manifest).get("status") == "ok"


def mem_mb(stage):
    """Memory per job from the model's size: base + factor x source MB (config `memory`)."""
    mem = config["memory"]

    def resource(wildcards, attempt):
        path = MANIFEST.format(model=wildcards.model)
        size_mb = read_json(path).get("total_bytes", 0) / 1e6 if os.path.exists(path) else 0
        return int(mem["base_mb"] + mem[stage] * size_mb * attempt)

    return resource


def pickle_flag(model):
    return "--unsafe-allow-pickle" if MODELS[model].get("allow_pickle") else ""


def stage_fingerprints(wildcards):
    """Param of the summary: the code fingerprints of the jobs behind it (recorded in it)."""
    return " ".join(f"--fingerprint {job_code_keys(rule, wildcards)}" for rule in ("convert", "validate", "evaluate"))


def certification_inputs(template, cutoff=True):
    """Input of the certification: `template` for every tier variant of the model, ancient (a stack's
    certification fills in its {stack} too). cutoff=False: a plain input, for the output of a rule that
    is not a checkpoint (evaluate_stack): Snakemake re-plans nothing after such a job, so an ancient
    input would leave the certification behind a rerun of it (and never look at its params)."""

    def files(wildcards):
        paths = [template.format(**{**dict(wildcards.items()), "variant": v}) for v in VARIANTS[wildcards.model]]
        return [ancient(p) for p in paths] if cutoff else paths

    return files


def certify_variants(wildcards, input):
    """Param of the certification: --variant NAME=PATH for every .apr (and, on builtin, the source, when
    the playbook's formats include its format: another stack certifies the .apr variants it evaluated),
    the source as the reference an encoder's embeddings are compared with, and the source's
    safetensors index when it has one."""
    args = [f"--variant {v}={apr}" for v, apr in zip(VARIANTS[wildcards.model], input.apr)]
    source = read_json(input.manifest)["source"]
    fmt = "gguf" if source.endswith(".gguf") else "safetensors"
    if fmt in PLAYBOOK["variants"]["formats"] and "stack" not in wildcards.keys():
        args.append(f"--variant source={source}")
    args.append(f"--reference {source}")
    index = Path(source) / "model.safetensors.index.json"
    return " ".join(args) + (f" --source-index {index}" if index.exists() else "")


def stack_certification_fingerprint(wildcards):
    """Param of a stack's certification: per tier variant, what the stack's fingerprint covers beyond
    Python code (a new llama.cpp build reruns that stack's certifications, no other)."""
    stack = OTHER_STACKS[wildcards.stack]
    return " ".join(sorted({stack_fingerprint(stack, v) for v in VARIANTS[wildcards.model]}))


# The run's life outside its jobs: crash recovery, the board's "not current" mark, the model cache's
# leases, the board and certifications after a failure (apr_qa.workflow.lifecycle; the Snakefile's
# parse step and onstart/onsuccess/onerror call it).
LINE = lifecycle.Line(
    results=Path(RESULTS),
    models=MODELS,
    variants=VARIANTS,
    prompts=Path(config["evaluation"]["prompts"]),
    checksum_cache=Path(JOB_ENV[checksums.CACHE_ENV]),
    playbook=PLAYBOOK,
    other_stacks=OTHER_STACKS,
    usd_per_device_hour=config["cost"]["usd_per_device_hour"],  # the Pareto frontier's cost axis
)


def recover_from_crash():
    """At parse time: only in the main process, never in a dry run, never under a live lock."""
    if workflow.is_main_process:
        LINE.recover_from_crash(locked=any(Path(".snakemake/locks").glob("*.lock")), dry_run=workflow.dryrun)


def certified_summaries(wildcards):
    """Summaries of every variant of every model its download did not skip."""
    return [ancient(SUMMARY.format(model=m, variant=v)) for m in MODELS if downloaded(m) for v in VARIANTS[m]]


def oracles(wildcards):
    """The runtime-oracle record of every downloaded model (none unless `oracle: true`)."""
    return [ORACLE.format(model=m) for m in MODELS if ORACLE_ON and downloaded(m)]


def differentials(wildcards):
    """builtin against every other stack, per variant of every downloaded model (none with only builtin)."""
    return [
        DIFFERENTIAL.format(model=m, variant=v, stack=s)
        for m in MODELS
        if downloaded(m)
        for v in VARIANTS[m]
        for s in OTHER_STACKS
    ]


def certifications(wildcards):
    """Every certification (builtin's and each other stack's) of a model its download did not skip
    (none without a tier)."""
    return [str(p) for p in LINE.certifications([m for m in MODELS if downloaded(m)])] if TIER else []


def certification_digest(evaluation):
    """Param: digests of everything a model's certification reads, per variant: the artifact's files
    and the certified stack's evaluations (`evaluation`: builtin's, or another stack's template)."""

    def par(wildcards):
        parts = []
        for v in VARIANTS[wildcards.model]:
            wc = {**dict(wildcards.items()), "variant": v}
            sha = APR_SHA.format(**wc)
            parts.append(digest_or_pending(sha, recorded_sha256))
            parts += [digest_or_pending(p) for p in (EVIDENCE.format(**wc), evaluation.format(**wc))]
        parts.append(digest_or_pending(MANIFEST.format(model=wildcards.model), weights_digest))
        return ",".join(parts)

    return par


model_digest = certification_digest(EVALUATION)


# Integrity. Snakemake rebuilds a missing file only when a job that needs it has to run; here
# nothing downstream of a conversion ever does by itself (ancient inputs, digest params), so a
# deleted .apr would stay deleted under a report that certifies it. The report therefore takes
# every artifact the results claim as (ancient) input, plus a param that names whatever lost its
# bytes: then the report job has to run, which makes Snakemake rebuild each missing artifact
# (an identical rebuild still cascades no further: the consumers' digest params are unchanged, and
# once the artifact is back the report's param is "intact" again). A file whose recorded sha256
# no longer matches (checked through the stat-keyed cache: free while size and times are
# unchanged) is not silently replaced: the report job's verify-checksums halts naming it.
CLAIMED = [APR, APR_SHA, CONVERSION, EVIDENCE, EVALUATION, VALIDATED, EVALUATED, SUMMARY]


def claimed_artifacts(wildcards):
    return [
        ancient(t.format(model=m, variant=v)) for m in MODELS if downloaded(m) for v in VARIANTS[m] for t in CLAIMED
    ]


def checksum_records(wildcards):
    """The download manifest and every .apr record of each downloaded model."""
    return [ancient(MANIFEST.format(model=m)) for m in MODELS if downloaded(m)] + [
        ancient(APR_SHA.format(model=m, variant=v)) for m in MODELS if downloaded(m) for v in VARIANTS[m]
    ]


def integrity_state(wildcards):
    """Param of the report: "intact", or every claimed artifact that is missing or lost its bytes."""
    return integrity.state(
        [
            integrity.Claims(
                manifest=Path(MANIFEST.format(model=m)),
                artifacts=[Path(t.format(model=m, variant=v)) for v in VARIANTS[m] for t in CLAIMED],
                if_downloaded=[Path(CERTIFICATION.format(model=m))] * bool(TIER)
                + [Path(ORACLE.format(model=m))] * ORACLE_ON,
                records=[Path(MANIFEST.format(model=m))]
                + [Path(APR_SHA.format(model=m, variant=v)) for v in VARIANTS[m]],
            )
            for m in MODELS
        ]
    )


def summaries_digest(wildcards):
    paths = [SUMMARY.format(model=m, variant=v) for m in MODELS for v in VARIANTS[m]]
    return ",".join(digest_or_pending(p) for p in paths)
