# Stacks under test (docs/stacks.md): every variant on each other configured stack (llama.cpp, a
# command-line runtime), against the same reference as builtin, then its per-token logits against
# builtin's on the same tokens (apr-qa diff-stacks, gate X1: a stack beyond the limit is flagged).
# The stack's fingerprint is a param: upgrading llama-cpp-python, or the command's binary, reruns
# only that stack's evaluations, their comparisons and the report.


rule evaluate_stack:
    input:
        apr=cutoff(APR),
        sha=cutoff(APR_SHA),
        manifest=cutoff(MANIFEST),
        validated=ancient(VALIDATED),
        prompts=config["evaluation"]["prompts"],
        golden=GOLDEN_REFERENCE,
        corpus=corpus_input,
    output:
        evaluation=STACK_EVALUATION,
        logits=STACK_LOGITS,
    log:
        layout.log(RESULTS, "evaluate_stack", "{model}", "{variant}", "{stack}"),
    benchmark:
        layout.benchmark(RESULTS, "evaluate_stack", "{model}", "{variant}", "{stack}")
    wildcard_constraints:
        stack="|".join(OTHER_STACKS) or "(?!)",
    conda:
        "../envs/apr-qa.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        evaluations=1,
        mem_mb=mem_mb("evaluate"),
    params:
        code=code("evaluate_stack"),
        stack=lambda wc: stack_fingerprint(OTHER_STACKS[wc.stack], wc.variant),
        spec=lambda wc: shlex.quote(OTHER_STACKS[wc.stack].to_json()),
        apr=digest(APR_SHA, recorded_sha256),
        corpus=digest(CORPUS_REFERENCE) if CORPUS_ON else "off",
        corpus_args=corpus_args,
        runs=RUNS,
        timeout=EVAL_TIMEOUT,
        extra=config["evaluation"]["extra_args"],
    shell:
        # exit 1 (a gate of the stack's own evaluation failed) is evidence for the report, not a failed job
        "{params.code} (apr-qa cache restore {input.manifest} && apr-qa checksum {input.apr} --expect {input.sha} && "
        "apr-qa verify-checksums {input.manifest} && "
        "{{ apr-qa eval {input.apr} --reference {input.golden} --prompts {input.prompts} --runs {params.runs} "
        "--threads {threads} {params.timeout} {params.corpus_args} {params.extra} --stack {params.spec} "
        "--variant {wildcards.variant} "
        "--json {output.evaluation} --logits {output.logits} || test $? -eq 1; }}) > {log} 2>&1"


rule diff_stacks:
    input:
        first=EVALUATION,
        first_logits=BUILTIN_LOGITS,
        second=STACK_EVALUATION,
        second_logits=STACK_LOGITS,
    output:
        DIFFERENTIAL,
    log:
        layout.log(RESULTS, "diff_stacks", "{model}", "{variant}", "{stack}"),
    wildcard_constraints:
        stack="|".join(OTHER_STACKS) or "(?!)",
    localrule: True
    conda:
        "../envs/apr-qa.yaml"
    params:
        code=code("diff_stacks"),
    shell:
        "{params.code} apr-qa diff-stacks {input.first} {input.second} --out {output} > {log} 2>&1"
