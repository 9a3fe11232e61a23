# Stage 3: validate (conversion gates C*, V*, I-*). The command always writes its evidence; the
# gate rule (rules/gates.smk) enforces it.


checkpoint validate:
    input:
        apr=cutoff(APR),
        sha=cutoff(APR_SHA),
        manifest=cutoff(MANIFEST),
        tolerances=TOLERANCES,
    output:
        evidence=EVIDENCE,
    log:
        layout.log(RESULTS, "validate", "{model}", "{variant}"),
    conda:
        "../envs/apr-qa.yaml"
    resources:
        validations=1,
        mem_mb=mem_mb("validate"),
    params:
        code=code("validate"),
        apr=digest(APR_SHA, recorded_sha256),
        weights=digest(MANIFEST, weights_digest),
        source=source_of,
        pickle=lambda wc: pickle_flag(wc.model),
        tolerances=f"--tolerances {TOLERANCES}" if TOLERANCES else "",
        andon=lambda wc, output: andon("validate", f"{wc.model}/{wc.variant}", output.evidence),
    shell:
        "{params.code} ({params.andon} sh -c 'apr-qa cache restore {input.manifest} && apr-qa checksum {input.apr} --expect {input.sha} && "
        "apr-qa verify-checksums {input.manifest} && "
        "apr-qa validate {input.apr} --source {params.source} --json {output.evidence} "
        "--subject {wildcards.model}/{wildcards.variant} {params.pickle} {params.tolerances}') > {log} 2>&1"
