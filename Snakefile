# apr-qa certification workflow: download -> convert -> validate -> evaluate -> certify -> report.
#
#   snakemake --cores 8                       # everything (profiles/default is picked up automatically)
#   snakemake --cores 8 results/report.md     # the same: the report depends on every gate
#   snakemake -n                              # plan only
#   snakemake --cores 8 results/report.md --config tier=smoke   # tier: smoke|mvp|quick|standard|deep
#
# Rules are thin `apr-qa ...` calls. Design notes (early cutoff, andon, checksums): rules/common.smk.
from snakemake.utils import min_version, validate

from apr_qa.workflow.overhead import coalesce_reevaluations, tame_collector

min_version("9.0")
# Snakemake's own CPU on large DAGs and long runs (why and figures: apr_qa/workflow/overhead.py)
tame_collector()
coalesce_reevaluations()


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/convert.smk"
include: "rules/validate.smk"
include: "rules/evaluate.smk"
include: "rules/stacks.smk"
include: "rules/gates.smk"
include: "rules/certify.smk"
include: "rules/oracle.smk"
include: "rules/corpus.smk"
include: "rules/report.smk"


recover_from_crash()


rule all:
    default_target: True
    input:
        REPORT,


onstart:
    # Temporary files of killed runs are removed; the board is marked "not current" until this run
    # ends (apr_qa.workflow.lifecycle: after a crash).
    LINE.start()


onsuccess:
    LINE.finish()


onerror:
    # A failed run still gets its Andon board: every failed variant shows as BLOCKED with its gate,
    # and (with a tier) each model with a blocked variant a BLOCKED certification with its Five Whys.
    LINE.after_failure()
