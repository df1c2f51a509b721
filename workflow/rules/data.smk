rule prepare_data:
    output:
        corpus=f"{DATA}/corpus.jsonl",
        qa=directory(f"{DATA}/qa"),
        tokenizer=directory(f"{DATA}/tokenizer"),
        # a muse study's raw documents (forgetlab.data.muse); the synthetic and tofu sources write none
        **({"text": directory(f"{DATA}/text")} if config["data"].get("source") == "muse" else {}),
        manifest=f"{DATA}/manifest.json",
    params:
        **job("prepare_data", lambda w: {}),
        out=lambda w, output: Path(output.manifest).parent,
    resources:
        **stage_resources("prepare_data"),
    log:
        f"{LOGS}/prepare_data.log",
    conda:
        ENV
    shell:
        "forgetlab prepare-data --config {STUDY_CONFIG} --out {params.out} > {log} 2>&1"
