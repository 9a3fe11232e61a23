# Gate O1, the independent oracle: our runtime against HuggingFace transformers on each source's
# weights at fp32 (`oracle: true`). Our runtime computes the model's golden and corpus references, so
# they wait for it: a disagreement fails this job (its log says by how much), and nothing is
# evaluated against a wrong reference. A model transformers cannot load is recorded as not verified.


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
        code=code("oracle"),
        weights=digest(MANIFEST, weights_digest),
        source=source_of,
    shell:
        "{params.code} (apr-qa cache restore {input.manifest} && apr-qa oracle {params.source} --prompts {input.prompts} "
        "--json {output.record}) > {log} 2>&1"
