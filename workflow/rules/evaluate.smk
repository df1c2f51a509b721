# Every model is scored on forget, retain, holdout, world_facts and real_authors, against reference
# tables of its grid cell: a target against its oracle (forget_quality, mia_reference, privleak);
# an unlearned model against its oracle and its target (relearn_recovery); the oracle on its own.


EVAL_SHELL = (
    "forgetlab evaluate --config {STUDY_CONFIG} {params.at} --model-dir {input.model} --data {params.data}"
    " --out {params.out} {params.tables} --threads {threads} > {log} 2>&1"
)


rule evaluate_pretrained:
    input:
        model=PRETRAINED,
        qa=rules.prepare_data.output.qa,
    output:
        multiext(f"{EVAL_PRETRAINED}/", *EVAL_OUT),
    params:
        **job("evaluate", lambda w: {"model": "pretrained", "split": w.split}),
        data=data_dir,
        out=out_dir,
        tables=tables,
    threads: stage_threads(config, "evaluate")
    resources:
        **stage_resources("evaluate"),
    log:
        f"{LOGS}/eval/pretrained/{{split}}.log",
    benchmark:
        f"{LOGS}/eval/pretrained/{{split}}.benchmark.tsv"
    conda:
        ENV
    shell:
        EVAL_SHELL


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        multiext(f"{EVAL}/", *EVAL_OUT),
    wildcard_constraints:
        model=one_of(["target", "oracle", *METHODS]),
    params:
        **job("evaluate", model_coords),
        data=data_dir,
        out=out_dir,
        tables=tables,
    threads: stage_threads(config, "evaluate")
    resources:
        **stage_resources("evaluate"),
    group:
        "evaluate"
    log:
        f"{LOGS}/eval/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/{{model}}.log",
    benchmark:
        f"{LOGS}/eval/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/{{model}}.benchmark.tsv"
    conda:
        ENV
    shell:
        EVAL_SHELL
