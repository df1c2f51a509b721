# Per regularizer entry: a target on retain + forget (shared by all splits) and, per split, a
# retain-only oracle with identical settings: finetune/<reg>/seed<k>/target and .../<split>/oracle.
# An entry with a `soup` option fine-tunes k ingredients of each (.../ingredient<i>) and averages
# them in a fan-in `soup` job.
# With training paths (forgetlab.paths) the same rule trains each stage of a path, from the previous
# stage's model: finetune/<reg>/seed<k>/stages/<s1>/.../<sj>/{target,<split>/oracle}; paths that share
# a prefix share those jobs.


# the fine-tunes are the longest jobs: start them before any unlearning or evaluation that is ready,
# so that the study does not end waiting on a late fine-tune and its chain of short jobs
rule finetune:
    input:
        pretrained=finetune_start,
        qa=rules.prepare_data.output.qa,
    output:
        directory(FINETUNED),
    wildcard_constraints:
        tuned=rf"({FINETUNED_MODEL}(/{INGREDIENT})?|{STAGE_MODEL})",
    priority: 10
    params:
        **job("finetune", finetune_coords),
        data=data_dir,
    threads: stage_threads(config, "finetune")
    resources:
        **stage_resources("finetune"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{tuned}}.log",
    benchmark:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{tuned}}.benchmark.tsv"
    conda:
        ENV
    shell:
        "exec forgetlab finetune --config {STUDY_CONFIG} {params.at} --pretrained {input.pretrained}"
        " --data {params.data} --out {output} --threads {threads} > {log} 2>&1"


# a soup entry's target or oracle: the average of its ingredients (`finetune` makes the ingredients)
ruleorder: soup > finetune


rule soup:
    input:
        ingredients,
    output:
        directory(FINETUNED),
    wildcard_constraints:
        reg=one_of(SOUP_K),
        tuned=FINETUNED_MODEL,
    params:
        **job("finetune", finetune_coords),
    resources:
        **stage_resources("soup"),
    log:
        f"{LOGS}/finetune/{{reg}}/seed{{seed}}/{{tuned}}.soup.log",
    conda:
        ENV
    shell:
        "forgetlab soup {input:q} --config {STUDY_CONFIG} {params.at} --out {output} > {log} 2>&1"
