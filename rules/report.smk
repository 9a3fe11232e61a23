# Stage 6: the report. It depends on every certified summary, hence on every gate marker: a run
# whose gate tripped cannot build it, so `snakemake results/report.md` exits non-zero, and the
# Snakefile's onerror handler writes the same report showing the BLOCKED variants (and, with a
# tier, the BLOCKED certifications). With a tier the rule also writes the registry (models.csv) and
# JUnit XML (one testcase per gate/scenario). Every run writes the figures (Pareto frontier, KLD /
# same top-1, latency: PNG for report.md, SVG embedded in the single-file report.html).
# `snakemake --report report.html` (or .zip) shows the same artifacts: the outputs below are
# flagged with report() and a caption each (rules/captions/), under the workflow description.
# Before writing, the rule verifies every checksum record of the results (download manifests and
# .apr records) and takes every artifact they claim as input: see "Integrity" in rules/common.smk.


report: "captions/workflow.rst"


FIGURES = {
    name: layout.template(RESULTS, name)
    for name in ("kld_png", "kld_svg", "latency_png", "latency_svg", "corpus_kld_png", "corpus_kld_svg")
}


rule report:
    input:
        certified_summaries,
        certifications,
        oracles,
        differentials,
        manifests=[ancient(MANIFEST.format(model=m)) for m in MODELS],
        claimed=claimed_artifacts,
        records=checksum_records,
        prompts=config["evaluation"]["prompts"],
    output:
        report(REPORT, caption="captions/report_md.rst", category="1. Andon board", labels={"file": "report.md"}),
        report(
            REPORT_HTML, caption="captions/report_html.rst", category="1. Andon board", labels={"file": "report.html"}
        ),
        report(PARETO_PNG, caption="captions/pareto.rst", category="2. Figures", labels={"figure": "Pareto frontier"}),
        PARETO_SVG,
        report(FIGURES["kld_png"], caption="captions/kld.rst", category="2. Figures", labels={"figure": "KLD, top-1"}),
        FIGURES["kld_svg"],
        report(
            FIGURES["latency_png"], caption="captions/latency.rst", category="2. Figures", labels={"figure": "latency"}
        ),
        FIGURES["latency_svg"],
        report(
            FIGURES["corpus_kld_png"],
            caption="captions/corpus_kld.rst",
            category="2. Figures",
            labels={"figure": "corpus KLD"},
        ),
        FIGURES["corpus_kld_svg"],
        *(
            [
                report(
                    MODELS_CSV,
                    caption="captions/models_csv.rst",
                    category="3. Certification",
                    labels={"file": "models.csv"},
                ),
                report(JUNIT, caption="captions/junit.rst", category="3. Certification", labels={"file": "junit.xml"}),
            ]
            if TIER
            else []
        ),
    log:
        layout.log(RESULTS, "report"),
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    params:
        code=code("report"),
        summaries=summaries_digest,
        integrity=integrity_state,
        verify=lambda wc, input: f"apr-qa verify-checksums {' '.join(input.records)} && " if input.records else "",
        cmd=" && ".join(LINE.report_commands()),
    shell:
        "{params.code} ({params.verify}{params.cmd}) > {log} 2>&1"
