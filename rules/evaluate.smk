# Stage 4: evaluate (golden prompts, statistics, logit consistency; gates T*). Runs only for a
# variant whose validation gates passed (the marker), against the model's golden reference: the source
# weights at float32 run once per model over the same prompts, runs and seeds (golden_reference), read
# by every variant's and every stack's evaluation. A plain rule, not a checkpoint: it reruns only when
# the prompts, the weights or its code change, and each of those reruns the evaluations anyway (a
# checkpoint would let a gate judge a stale evaluation while the reference is rebuilt). Runs per prompt
# and the per-prompt timeout come from the tier (rules/common.smk: RUNS, EVAL_TIMEOUT).


rule golden_reference:
    input:
        manifest=cutoff(MANIFEST),
        oracle=oracle_input,
        prompts=config["evaluation"]["prompts"],
    output:
        reference=GOLDEN_REFERENCE,
    log:
        layout.log(RESULTS, "golden_reference", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "golden_reference", "{model}")
    conda:
        "../envs/apr-qa.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        evaluations=1,
        gpu=1 if config["evaluation"]["device"] == "cuda" else 0,
        mem_mb=mem_mb("evaluate"),
    params:
        code=code("golden_reference"),
        weights=digest(MANIFEST, weights_digest),
        source=source_of,
        runs=RUNS,
        timeout=EVAL_TIMEOUT,
        device=config["evaluation"]["device"],
        extra=config["evaluation"]["extra_args"],
    shell:
        "{params.code} (apr-qa cache restore {input.manifest} && apr-qa golden-reference {params.source} --prompts {input.prompts} "
        "--runs {params.runs} --device {params.device} --threads {threads} {params.timeout} {params.extra} "
        "--out {output.reference}) > {log} 2>&1"


checkpoint evaluate:
    input:
        apr=cutoff(APR),
        sha=cutoff(APR_SHA),
        manifest=cutoff(MANIFEST),
        validated=ancient(VALIDATED),
        prompts=config["evaluation"]["prompts"],
        golden=GOLDEN_REFERENCE,
        corpus=corpus_input,
    output:
        **({"logits": BUILTIN_LOGITS} if OTHER_STACKS else {}),  # compared with the other stacks'
        evaluation=EVALUATION,
    log:
        layout.log(RESULTS, "evaluate", "{model}", "{variant}"),
    benchmark:
        layout.benchmark(RESULTS, "evaluate", "{model}", "{variant}")
    conda:
        "../envs/apr-qa.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        evaluations=1,
        gpu=1 if config["evaluation"]["device"] == "cuda" else 0,
        mem_mb=mem_mb("evaluate"),
    params:
        code=code("evaluate"),
        apr=digest(APR_SHA, recorded_sha256),
        corpus=digest(CORPUS_REFERENCE) if CORPUS_ON else "off",
        corpus_args=corpus_args,
        runs=RUNS,
        timeout=EVAL_TIMEOUT,
        device=config["evaluation"]["device"],
        extra=config["evaluation"]["extra_args"],
        logits=lambda wc, output: f"--logits {output.logits}" if OTHER_STACKS else "",
        andon=lambda wc, output: andon("evaluate", f"{wc.model}/{wc.variant}", output.evaluation),
    shell:
        "{params.code} ({params.andon} sh -c 'apr-qa cache restore {input.manifest} && apr-qa checksum {input.apr} --expect {input.sha} && "
        "apr-qa verify-checksums {input.manifest} && "
        "apr-qa eval {input.apr} --reference {input.golden} --prompts {input.prompts} --runs {params.runs} "
        "--device {params.device} --threads {threads} {params.corpus_args} {params.timeout} "
        "{params.extra} {params.logits} --json {output.evaluation}') > {log} 2>&1"
