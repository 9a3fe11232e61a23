# Gates and the per-variant summary. A gate job reads one evidence file and fails on a tripped
# fail/halt gate (its log names the gate, the model/variant, measured vs threshold) or touches its
# marker. The summary needs both markers, so only variants that passed every gate get one.


checkpoint gate:
    input:
        evidence=cutoff(GATED),
    output:
        marker=MARKER,
    log:
        layout.log(RESULTS, "gate", "{stage}", "{model}", "{variant}"),
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    params:
        code=code("gate"),
        evidence=digest(GATED),
        andon=f"--state {ANDON} --policy {POLICY}",
    shell:
        "{params.code} apr-qa gate {input.evidence} --stage {wildcards.stage} --subject {wildcards.model}/{wildcards.variant} "
        "--marker {output.marker} {params.andon} > {log} 2>&1 || {{ cat {log} >&2; exit 1; }}"


# The variant's status across the stages, from exactly the files below. Andon events are not read:
# a variant whose gates both passed has none left (a stage that succeeds clears its events), and
# the report, which is written whatever happened, reads them itself. The manifest, .apr and
# conversion record are ancient without a digest: they reach the summary through the evidence.
checkpoint summarize:
    input:
        manifest=cutoff(MANIFEST),
        apr=cutoff(APR),
        apr_record=cutoff(APR_SHA),
        conversion=cutoff(CONVERSION),
        validation=cutoff(EVIDENCE),
        evaluation=cutoff(EVALUATION),
        validated=ancient(VALIDATED),
        evaluated=ancient(EVALUATED),
    output:
        summary=SUMMARY,
    log:
        layout.log(RESULTS, "summarize", "{model}", "{variant}"),
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    params:
        code=code("summarize"),
        evidence=digest(EVIDENCE),
        evaluation=digest(EVALUATION),
        fingerprints=stage_fingerprints,
    shell:
        "{params.code} apr-qa summarize --model {wildcards.model} --variant {wildcards.variant} --manifest {input.manifest} "
        "--apr {input.apr} --apr-record {input.apr_record} --conversion {input.conversion} "
        "--validation {input.validation} --evaluation {input.evaluation} {params.fingerprints} "
        "--json {output.summary} > {log} 2>&1"
