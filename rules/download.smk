# Stage 1: download (gates D1-D5, G6: docs/gates.md). A checkpoint: consumers are re-planned from the manifest it writes.
# D1/D2/G6 skip the model (the manifest says "skipped", nothing downstream is planned for it);
# D3 fails the job after retries; D4 halts. Under `model_cache:` (APR_QA_MODEL_CACHE) the download first
# leases the revision and evicts least-recently-used ones to fit the cap (apr_qa.hub.model_cache).


checkpoint download:
    output:
        manifest=MANIFEST,
    log:
        layout.log(RESULTS, "download", "{model}"),
    # On a cluster whose compute nodes have no internet, download on the head node instead.
    localrule: config["download"]["on_head_node"]
    conda:
        "../envs/apr-qa.yaml"
    resources:
        downloads=1,
        mem_mb=1024,
    params:
        code=code("download"),
        repo=lambda wc: MODELS[wc.model]["repo"],
        revision=lambda wc: MODELS[wc.model]["revision"],
        files=lambda wc: " ".join(f"--files '{g}'" for g in MODELS[wc.model]["files"]),
        pickle=lambda wc: pickle_flag(wc.model),
        pins=lambda wc: " ".join(f"--sha256 '{n}={h}'" for n, h in MODELS[wc.model].get("sha256", {}).items()),
        max_gb=config["download"]["max_size_gb"],
        retries=config["download"]["retries"],
        slow_s=config["download"]["slow_s"],
        andon=lambda wc: andon("download", wc.model),
    shell:
        "{params.code} {params.andon} apr-qa download {params.repo} --id {wildcards.model} --revision {params.revision} "
        "{params.files} {params.pickle} {params.pins} --max-size-gb {params.max_gb} --retries {params.retries} "
        "--slow-s {params.slow_s} --manifest {output.manifest} > {log} 2>&1"
