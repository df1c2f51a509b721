rule unlearn:
    input:
        target=target_model,
        qa=rules.prepare_data.output.qa,
    output:
        directory(UNLEARNED),
    params:
        **job("unlearn", model_coords),
        data=data_dir,
    threads: stage_threads(config, "unlearn")
    resources:
        **stage_resources("unlearn"),
    log:
        f"{LOGS}/unlearn/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/{{method}}.log",
    benchmark:
        f"{LOGS}/unlearn/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/{{method}}.benchmark.tsv"
    conda:
        ENV
    shell:
        "exec forgetlab unlearn --config {STUDY_CONFIG} {params.at} --target {input.target} --data {params.data}"
        " --out {output} --threads {threads} > {log} 2>&1"
