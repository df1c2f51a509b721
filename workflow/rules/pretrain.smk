rule pretrain:
    input:
        corpus=rules.prepare_data.output.corpus,
        tokenizer=rules.prepare_data.output.tokenizer,
    output:
        directory(PRETRAINED),
    params:
        stage=params_json("pretrain", model="pretrained"),
        data=DATA,
    threads: stage_threads(config, "pretrain")
    resources:
        **stage_resources("pretrain"),
    log:
        f"{LOGS}/pretrain.log",
    shell:
        "exec forgetlab pretrain --data {params.data} --out {output} --threads {threads}"
        " --params {params.stage:q} > {log} 2>&1"
