rule prepare_data:
    output:
        corpus=f"{DATA}/corpus.jsonl",
        qa=directory(f"{DATA}/qa"),
        tokenizer=directory(f"{DATA}/tokenizer"),
        manifest=f"{DATA}/manifest.json",
    params:
        stage=params_json("prepare_data"),
        out=DATA,
    resources:
        **stage_resources("prepare_data"),
    log:
        f"{LOGS}/prepare_data.log",
    shell:
        "forgetlab prepare-data --out {params.out} --params {params.stage:q} > {log} 2>&1"
