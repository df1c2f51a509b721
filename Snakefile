# forgetlab: how the fine-tuning regularizer changes how well a model can later unlearn.
#
#   prepare_data -> pretrain -> finetune (target on retain+forget, retain-only oracle; per regularizer)
#                -> unlearn (per method) -> evaluate (against the oracle) -> report
#                   (optional: sequential unlearning, chunk by chunk, each step evaluated)
#                   (optional: training paths, ordered fine-tuning stages, each path its own target and oracle)
#
# Each rule runs one `forgetlab <stage>` command with the study config and the job's grid
# coordinates; forgetlab.config.stage_params resolves its parameters (workflow/rules/common.smk).
#
# snakemake --cores all                                   # the default study (config/config.yaml)
# snakemake --cores all --configfile config/smoke.yaml    # the micro study of the tests
import gc
import os

from snakemake.utils import min_version

from forgetlab.config import check_or_exit

min_version("8.20")


# the default study, unless --configfile names another (Snakemake would otherwise merge the two)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# the JSON schema (workflow/schemas/config.schema.yaml), then the component registries: a bad
# config stops here with one line naming the key, before any job is planned
check_or_exit(config)


report: "workflow/report/workflow.rst"


# jobs' `forgetlab` commands run in a fork server with torch, transformers and mlflow imported once
# (forgetlab.forkserver; docs/running.md); FORGETLAB_FORKSERVER=0 snakemake ... runs each in its own process
os.environ.setdefault("FORGETLAB_FORKSERVER", "1")

# Planning keeps every job, file and wildcard object of the DAG until it ends: at Python's default
# thresholds (700, 10, 10) the garbage collector scans them over and over, ~18 % of planning a
# 10,000-job study. Collecting less often frees the same garbage, later (docs/benchmarks.md, planning).
gc.set_threshold(100_000, 20, 100)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sequential.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        study_outputs(),
