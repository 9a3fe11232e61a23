# The corpus reference (docs/corpus.md): the model's source weights at float32 run once over the
# corpus; every variant's evaluation and every stack's reads it (apr-qa eval --corpus-reference) for
# the corpus statistics and gate Q1; an encoder's file holds the corpus sentences' embeddings. A
# checkpoint, so its consumers' digest param is recomputed when it finishes (early cutoff, common.smk).


checkpoint corpus_reference:
    input:
        manifest=cutoff(MANIFEST),
        oracle=oracle_input,
        definition=CORPUS["definition"],
    output:
        reference=CORPUS_REFERENCE,
    log:
        layout.log(RESULTS, "corpus_reference", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "corpus_reference", "{model}")
    conda:
        "../envs/apr-qa.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        evaluations=1,
        mem_mb=mem_mb("evaluate"),
    params:
        code=code("corpus_reference"),
        weights=digest(MANIFEST, weights_digest),
        source=source_of,
        size=f"--tokens {CORPUS['tokens']} --n-ctx {CORPUS['n_ctx']} --top-k {CORPUS['top_k']}",
    shell:
        "{params.code} (apr-qa cache restore {input.manifest} && apr-qa corpus-reference {params.source} --corpus {input.definition} "
        "{params.size} --threads {threads} --out {output.reference}) > {log} 2>&1"
