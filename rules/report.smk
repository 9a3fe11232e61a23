# Stage 6: the report. It depends on every certified summary, hence on every gate marker: a run
# whose gate tripped cannot build it, so `snakemake results/report.md` exits non-zero, and the
# Snakefile's onerror handler writes the same report showing the BLOCKED variants (and, with a
# tier, the BLOCKED certifications). With a tier the rule also writes the registry (models.csv),
# JUnit XML (one testcase per gate/scenario) and the Pareto plot, which report.md links and the
# single-file report.html embeds. Outputs are registered for `snakemake --report` too.
# Before writing, the rule verifies every checksum record of the results (download manifests and
# .apr records) and takes every artifact they claim as input: see "Integrity" in rules/common.smk.

rule report:
    input:
        certified_summaries,
        certifications,
        oracles,
        manifests=[ancient(MANIFEST.format(model=m)) for m in MODELS],
        claimed=claimed_artifacts,
        records=checksum_records,
        prompts=config["evaluation"]["prompts"],
    output:
        REPORT,
        report(REPORT_HTML, category="Report", labels={"file": "report.html"}),
        *([report(MODELS_CSV, category="Certification", labels={"file": "models.csv"}),
           report(JUNIT, category="Certification", labels={"file": "junit.xml"}),
           report(PARETO_PNG, category="Certification", labels={"file": "Pareto frontier"}),
           PARETO_SVG] if TIER else []),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        fp=fingerprint("report"),
        summaries=summaries_digest,
        integrity=integrity_state,
        verify=lambda wc, input: f"apr-qa verify-checksums {' '.join(input.records)} && " if input.records else "",
        cmd=" && ".join(report_commands()),
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    shell:
        "({params.verify}{params.cmd}) > {log} 2>&1"
