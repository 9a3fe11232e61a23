# The model's certification (tier playbook): once every tier variant of the model passed its gates,
# `apr-qa certify` runs the playbook's scenarios on the .apr variants (and the source, when the
# playbook's formats include its format) and scores them together with the stage evidence
# (validate, evaluate, and the download manifest for D4 provenance) -> MQS, grade, status, G0-G4.
# A certification that does not pass its tier (exit 1) is a result, not a job failure. A variant
# the gates blocked never reaches this rule: the onerror handler certifies that model as BLOCKED.


rule certify:
    input:
        apr=certification_inputs(APR),
        evidence=certification_inputs(EVIDENCE),
        evaluation=certification_inputs(EVALUATION),
        evaluated=certification_inputs(EVALUATED),
        manifest=ancient(MANIFEST),
        playbook=PLAYBOOK_FILE or [],
    output:
        evidence=CERTIFICATION,
    log:
        layout.log(RESULTS, "certify", "{model}"),
    conda:
        "../envs/apr-qa.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        evaluations=1,
        mem_mb=mem_mb("evaluate"),
    params:
        code=code("certify"),
        inputs=model_digest,
        model_id=lambda wc: MODELS[wc.model]["repo"],
        family=lambda wc: (f"--family {MODELS[wc.model]['family']}" if MODELS[wc.model].get("family") else ""),
        variants=certify_variants,
        evidence=lambda wc, input: " ".join(
            f"--evidence {p}" for p in [input.manifest, *input.evidence, *input.evaluation]
        ),
        policy=(f"--failure-policy {config['failure_policy']}" if config.get("failure_policy") else ""),
        andon=lambda wc, output: andon("certify", wc.model, output.evidence),
    shell:
        "{params.code} (apr-qa cache restore {input.manifest} && "
        "{params.andon} apr-qa certify --model-id {params.model_id} {params.family} --playbook {input.playbook} "
        "{params.variants} {params.evidence} {params.policy} --output {output.evidence}) > {log} 2>&1 && "
        "apr-qa cache release {input.manifest} --certification {output.evidence} >> {log} 2>&1"


# The same certification on every other configured stack (docs/stacks.md, "Certifying a stack"): the
# tier playbook's scenarios run on that stack (its adapter, as `apr-qa eval --stack` loads it), scored
# with the artifact's evidence (download manifest, validation: shared by every stack) and the stack's
# own evaluations (evaluate_stack; a gate they tripped fails its gateway). One file per model and stack;
# the stack's fingerprint is a param, so upgrading llama-cpp-python reruns only that stack's rows.
# Like certify, a certification that does not pass its tier (exit 1) is a result, not a job failure.


rule certify_stack:
    input:
        apr=certification_inputs(APR),
        evidence=certification_inputs(EVIDENCE),
        evaluation=certification_inputs(STACK_EVALUATION, cutoff=False),
        manifest=ancient(MANIFEST),
        playbook=PLAYBOOK_FILE or [],
    output:
        evidence=STACK_CERTIFICATION,
    log:
        layout.log(RESULTS, "certify_stack", "{model}", "{stack}"),
    wildcard_constraints:
        stack="|".join(OTHER_STACKS) or "(?!)",
    conda:
        "../envs/apr-qa.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        evaluations=1,
        mem_mb=mem_mb("evaluate"),
    params:
        code=code("certify_stack"),
        stack=stack_certification_fingerprint,
        inputs=certification_digest(STACK_EVALUATION),
        model_id=lambda wc: MODELS[wc.model]["repo"],
        family=lambda wc: (f"--family {MODELS[wc.model]['family']}" if MODELS[wc.model].get("family") else ""),
        variants=certify_variants,
        spec=lambda wc: shlex.quote(OTHER_STACKS[wc.stack].to_json()),
        evidence=lambda wc, input: " ".join(
            f"--evidence {p}" for p in [input.manifest, *input.evidence, *input.evaluation]
        ),
        policy=(f"--failure-policy {config['failure_policy']}" if config.get("failure_policy") else ""),
        andon=lambda wc, output: andon("certify", f"{wc.model}/{wc.stack}", output.evidence),
    shell:
        "{params.code} {params.andon} apr-qa certify --model-id {params.model_id} {params.family} --playbook {input.playbook} "
        "--stack {params.spec} {params.variants} {params.evidence} {params.policy} --output {output.evidence} "
        "> {log} 2>&1"
