# Stage 2: convert to .apr. A checkpoint, so an identical re-conversion does not cascade.
# The downloaded files are re-verified against the manifest first (D4, from the checksum cache),
# and the artifact's own sha256 is recorded for its consumers.


checkpoint convert:
    input:
        manifest=cutoff(MANIFEST),
    output:
        apr=APR,
        sha=APR_SHA,
        summary=CONVERSION,
    log:
        layout.log(RESULTS, "convert", "{model}", "{variant}"),
    benchmark:
        layout.benchmark(RESULTS, "convert", "{model}", "{variant}")
    conda:
        "../envs/apr-qa.yaml"
    resources:
        conversions=1,
        mem_mb=mem_mb("convert"),
    params:
        code=code("convert"),
        weights=digest(MANIFEST, weights_digest),
        source=source_of,
        pickle=lambda wc: pickle_flag(wc.model),
        andon=lambda wc: andon("convert", f"{wc.model}/{wc.variant}"),
    shell:
        "{params.code} ({params.andon} sh -c 'apr-qa cache restore {input.manifest} && apr-qa verify-checksums {input.manifest} && "
        "apr-qa convert {params.source} {output.apr} --quant {wildcards.variant} --manifest {input.manifest} "
        "{params.pickle} --json {output.summary} && apr-qa checksum {output.apr} --json {output.sha}') > {log} 2>&1"
