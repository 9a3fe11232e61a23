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


# The model's certification (tier playbook, issue 5): once every tier variant of the model passed
# its gates, `apr-qa certify` runs the playbook's scenarios on the .apr variants (and the source,
# when the playbook's formats include its format) and scores them together with the stage evidence
# (validate, evaluate, and the download manifest for D4 provenance) -> MQS, grade, status, G0-G4.
# A certification that does not pass its tier (exit 1) is a result, not a job failure. A variant
# the gates blocked never reaches this rule: the onerror handler certifies that model as BLOCKED.


def certification_inputs(template):
    def files(wildcards):
        return [ancient(template.format(model=wildcards.model, variant=v)) for v in VARIANTS[wildcards.model]]

    return files


def certify_variants(wildcards, input):
    args = [f"--variant {v}={apr}" for v, apr in zip(VARIANTS[wildcards.model], input.apr)]
    source = read_json(input.manifest)["source"]
    fmt = "gguf" if source.endswith(".gguf") else "safetensors"
    if fmt in PLAYBOOK["variants"]["formats"]:
        args.append(f"--variant source={source}")
    index = Path(source) / "model.safetensors.index.json"
    return " ".join(args) + (f" --source-index {index}" if index.exists() else "")


rule certify_model:
    input:
        apr=certification_inputs(APR),
        evidence=certification_inputs(EVIDENCE),
        evaluation=certification_inputs(EVALUATION),
        evaluated=certification_inputs(MARKER.replace("{stage}", "evaluate")),
        manifest=ancient(MANIFEST),
        playbook=PLAYBOOK_FILE or [],
    output:
        evidence=CERTIFICATION,
    log:
        f"{RESULTS}/logs/certify/{{model}}.log",
    params:
        fp=lambda wc: certification_fingerprint(VARIANTS[wc.model]),
        inputs=model_digest,
        model_id=lambda wc: MODELS[wc.model]["repo"],
        family=lambda wc: f"--family {MODELS[wc.model]['family']}" if MODELS[wc.model].get("family") else "",
        variants=certify_variants,
        evidence=lambda wc, input: " ".join(f"--evidence {p}" for p in [input.manifest, *input.evidence, *input.evaluation]),
        policy=f"--failure-policy {config['failure_policy']}" if config.get("failure_policy") else "",
        andon=lambda wc, output: andon("certify", wc.model, output.evidence),
    threads: config["evaluation"].get("threads", 2)
    resources:
        evaluations=1,
        mem_mb=mem_mb("evaluate"),
    conda:
        "../envs/apr-qa.yaml"
    shell:
        "{params.andon} apr-qa certify --model-id {params.model_id} {params.family} --playbook {input.playbook} "
        "{params.variants} {params.evidence} {params.policy} --output {output.evidence} > {log} 2>&1"
