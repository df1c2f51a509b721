# Sequential unlearning (MUSE "sustainability"), for the study's optional `sequential:` section: the
# forget split is cut by author into k chunks (forgetlab.sequential), and step j (1..k) unlearns
# chunk j starting from step j-1's model (step 0 is the target). The reference model of methods
# that have one stays the target at every step. Each step is evaluated like any unlearned model:
# on the whole forget split, against the oracle and the original target.


rule unlearn_sequential:
    input:
        start=sequential_start,
        reference=target_model,
        qa=rules.prepare_data.output.qa,
    output:
        directory(SEQ_UNLEARNED),
    wildcard_constraints:
        reg=one_of(SEQ["regularizers"]),
        method=one_of(SEQ["methods"]),
        split=one_of(SEQ["splits"]),
        step=one_of(SEQ_STEPS),
    params:
        **job("unlearn", model_coords),
        data=data_dir,
    threads: stage_threads(config, "unlearn")
    resources:
        **stage_resources("unlearn"),
    log:
        f"{LOGS}/unlearn/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/sequential/{{method}}/step{{step}}.log",
    benchmark:
        f"{LOGS}/unlearn/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/sequential/{{method}}/step{{step}}.benchmark.tsv"
    conda:
        ENV
    shell:
        "exec forgetlab unlearn --config {STUDY_CONFIG} {params.at} --target {input.start}"
        " --reference-model {input.reference} --data {params.data} --out {output} --threads {threads} > {log} 2>&1"


rule evaluate_sequential:
    input:
        model=SEQ_UNLEARNED,
        qa=rules.prepare_data.output.qa,
        oracle=eval_file("oracle"),
        target=eval_file("target"),
    output:
        multiext(f"{SEQ_EVAL}/", *EVAL_OUT),
    wildcard_constraints:
        reg=one_of(SEQ["regularizers"]),
        method=one_of(SEQ["methods"]),
        split=one_of(SEQ["splits"]),
        step=one_of(SEQ_STEPS),
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
        f"{LOGS}/eval/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/sequential/{{method}}/step{{step}}.log",
    benchmark:
        f"{LOGS}/eval/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/sequential/{{method}}/step{{step}}.benchmark.tsv"
    conda:
        ENV
    shell:
        EVAL_SHELL
