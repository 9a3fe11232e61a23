# Stage 6: the report. It depends on every certified summary, hence on every gate marker: a run
# whose gate tripped cannot build it, so `snakemake results/report.md` exits non-zero, and the
# Snakefile's onerror handler writes the same report showing the BLOCKED variants.


rule report:
    input:
        certified_summaries,
        manifests=[ancient(MANIFEST.format(model=m)) for m in MODELS],
        prompts=config["evaluation"]["prompts"],
    output:
        REPORT,
    log:
        f"{RESULTS}/logs/report.log",
    params:
        fp=fingerprint("report"),
        summaries=summaries_digest,
        cmd=report_command(),
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    shell:
        "{params.cmd} > {log} 2>&1"
