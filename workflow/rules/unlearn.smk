rule unlearn:
    input:
        target=TARGET,
        qa=rules.prepare_data.output.qa,
    output:
        directory(UNLEARNED),
    params:
        stage=lambda w: params_json("unlearn", **coords(w, model="unlearned")),
        data=DATA,
    threads: stage_threads(config, "unlearn")
    resources:
        **stage_resources("unlearn"),
    log:
        f"{LOGS}/unlearn/{{reg}}/seed{{seed}}/{{split}}/{{method}}.log",
    shell:
        "exec forgetlab unlearn --target {input.target} --data {params.data} --out {output}"
        " --threads {threads} --params {params.stage:q} > {log} 2>&1"
