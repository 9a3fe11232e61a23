# The independent oracle: our runtime against HuggingFace transformers on each source's weights at
# fp32 (`oracle: true`; transformers is a test/benchmark dependency, never the runtime's). A
# disagreement means our runtime is wrong: the record says so and the report shows it in red.


rule oracle:
    input:
        manifest=cutoff(MANIFEST),
        prompts=config["evaluation"]["prompts"],
    output:
        record=ORACLE,
    log:
        layout.log(RESULTS, "oracle", "{model}"),
    conda:
        "../envs/apr-qa.yaml"
    resources:
        evaluations=1,
        mem_mb=mem_mb("evaluate"),
    params:
        fp=fingerprint("oracle"),
        weights=digest(MANIFEST, weights_digest),
        source=source_of,
    shell:
        "(apr-qa cache restore {input.manifest} && apr-qa oracle {params.source} --prompts {input.prompts} "
        "--record-only --json {output.record}) > {log} 2>&1"
