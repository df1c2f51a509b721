rule finetune_target:
    input:
        pretrained=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        directory(TARGET),
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="target", role="target")),
        data=DATA,
    threads: stage_threads(config, "finetune")
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/target.log",
    shell:
        "forgetlab finetune --pretrained {input.pretrained} --data {params.data} --out {output}"
        " --threads {threads} --params {params.stage:q} > {log} 2>&1"


rule finetune_oracle:
    input:
        pretrained=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        directory(ORACLE),
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="oracle", role="oracle")),
        data=DATA,
    threads: stage_threads(config, "finetune")
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{split}}/oracle.log",
    shell:
        "forgetlab finetune --pretrained {input.pretrained} --data {params.data} --out {output}"
        " --threads {threads} --params {params.stage:q} > {log} 2>&1"
