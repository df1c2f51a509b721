# Per regularizer entry: a target on retain + forget (shared by all splits) and, per split, a
# retain-only oracle with identical settings. A model_soup entry fine-tunes K ingredients of each
# and averages them in a fan-in soup rule.

FINETUNE_SHELL = (
    "exec forgetlab finetune --pretrained {input.pretrained} --data {params.data} --out {output}"
    " --threads {threads} --params {params.stage:q} > {log} 2>&1"
)
# the fine-tunes are the longest jobs: start them before any unlearning or evaluation that is ready,
# so that the study does not end waiting on a late fine-tune and its chain of short jobs
FINETUNE_PRIORITY = 10
SOUP_SHELL = "forgetlab soup {input:q} --out {output} --params {params.stage:q} > {log} 2>&1"


rule finetune_target:
    input:
        pretrained=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        directory(TARGET),
    wildcard_constraints:
        reg=one_of(PLAIN),
    priority: FINETUNE_PRIORITY
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="target", role="target")),
        data=DATA,
    threads: stage_threads(config, "finetune")
    resources:
        **stage_resources("finetune"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/target.log",
    shell:
        FINETUNE_SHELL


rule finetune_oracle:
    input:
        pretrained=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        directory(ORACLE),
    wildcard_constraints:
        reg=one_of(PLAIN),
    priority: FINETUNE_PRIORITY
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="oracle", role="oracle")),
        data=DATA,
    threads: stage_threads(config, "finetune")
    resources:
        **stage_resources("finetune"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{split}}/oracle.log",
    shell:
        FINETUNE_SHELL


rule finetune_target_ingredient:
    input:
        pretrained=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        directory(TARGET_INGREDIENT),
    priority: FINETUNE_PRIORITY
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="target", role="target")),
        data=DATA,
    threads: stage_threads(config, "finetune")
    resources:
        **stage_resources("finetune"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/target.ingredient{{i}}.log",
    shell:
        FINETUNE_SHELL


rule finetune_oracle_ingredient:
    input:
        pretrained=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        directory(ORACLE_INGREDIENT),
    priority: FINETUNE_PRIORITY
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="oracle", role="oracle")),
        data=DATA,
    threads: stage_threads(config, "finetune")
    resources:
        **stage_resources("finetune"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{split}}/oracle.ingredient{{i}}.log",
    shell:
        FINETUNE_SHELL


rule soup_target:
    input:
        ingredients(TARGET_INGREDIENT),
    output:
        directory(TARGET),
    wildcard_constraints:
        reg=one_of(SOUP_K),
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="target", role="target")),
    resources:
        **stage_resources("soup"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/target.soup.log",
    shell:
        SOUP_SHELL


rule soup_oracle:
    input:
        ingredients(ORACLE_INGREDIENT),
    output:
        directory(ORACLE),
    wildcard_constraints:
        reg=one_of(SOUP_K),
    params:
        stage=lambda w: params_json("finetune", **coords(w, model="oracle", role="oracle")),
    resources:
        **stage_resources("soup"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{split}}/oracle.soup.log",
    shell:
        SOUP_SHELL
