# Gates and the certify stage. A gate job reads one evidence file and fails on a tripped fail/halt
# gate (its log names the gate, the model/variant, measured vs threshold) or touches its marker.
# certify needs both markers, so only variants that passed every gate get a summary.

GATED = f"{RESULTS}/{{stage}}/{{model}}/{{variant}}.json"  # EVIDENCE or EVALUATION by stage


checkpoint gate:
    input:
        evidence=cutoff(GATED),
    output:
        marker=MARKER,
    log:
        f"{RESULTS}/logs/gate/{{stage}}/{{model}}/{{variant}}.log",
    params:
        fp=fingerprint("gate"),
        evidence=digest(GATED),
        andon=f"--state {ANDON} --policy {POLICY}",
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    shell:
        "apr-qa gate {input.evidence} --stage {wildcards.stage} --subject {wildcards.model}/{wildcards.variant} "
        "--marker {output.marker} {params.andon} > {log} 2>&1 || {{ cat {log} >&2; exit 1; }}"


checkpoint certify:
    input:
        evidence=cutoff(EVIDENCE),
        evaluation=cutoff(EVALUATION),
        validated=ancient(MARKER.replace("{stage}", "validate")),
        evaluated=ancient(MARKER.replace("{stage}", "evaluate")),
    output:
        summary=SUMMARY,
    log:
        f"{RESULTS}/logs/certify/{{model}}/{{variant}}.log",
    params:
        fp=fingerprint("certify"),
        evidence=digest(EVIDENCE),
        evaluation=digest(EVALUATION),
        results=lambda wc, output: str(Path(output.summary).parents[2]),
        fingerprints=lambda wc: " ".join(
            f"--fingerprint {fingerprint(s, wc.variant)}" for s in ("convert", "validate", "evaluate")
        ),
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    shell:
        "apr-qa summarize --results {params.results} --model {wildcards.model} --variant {wildcards.variant} "
        "{params.fingerprints} --json {output.summary} > {log} 2>&1"
