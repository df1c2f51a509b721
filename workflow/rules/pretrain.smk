rule pretrain:
    input:
        corpus=rules.prepare_data.output.corpus,
        tokenizer=rules.prepare_data.output.tokenizer,
    output:
        directory(PRETRAINED),
    params:
        **job("pretrain", lambda w: {}),
        data=lambda w, input: Path(input.corpus).parent,
    threads: stage_threads(config, "pretrain")
    resources:
        **stage_resources("pretrain"),
    log:
        f"{LOGS}/pretrain.log",
    benchmark:
        f"{LOGS}/pretrain.benchmark.tsv"
    conda:
        ENV
    shell:
        "exec forgetlab pretrain --config {STUDY_CONFIG} --data {params.data} --out {output}"
        " --threads {threads} > {log} 2>&1"
