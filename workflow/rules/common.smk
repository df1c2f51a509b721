# The study grid and the paths of every artifact. The only place in the workflow with logic.
import inspect
from pathlib import Path

try:  # a Snakemake internal (9.x); without it, rule functions are left as they are (only slower to plan)
    from snakemake.common import overwrite_function_params
except ImportError:
    overwrite_function_params = None

from forgetlab.config import entry_soup, sequential_runs, snapshot, stage_params, stage_threads
from forgetlab.paths import ROOT as STAGE_ROOT, authors_stages, entry_paths, parse_stage_model, path_model, previous_model, study_paths
from forgetlab.soup import Soup

STUDY = config["study"]
DATA = f"data/{STUDY}"
RES = f"results/{STUDY}"
LOGS = f"{RES}/logs"
# Every job reads its parameters from this snapshot of the validated config and its own grid
# coordinates (`forgetlab <stage> --config STUDY_CONFIG --at ...`). Content-addressed, so a job's
# recorded command names the exact config it ran with. The shells use it directly, not as an
# input or a param (which `snakemake --lint` would prefer): its path changes with any key of the
# config, and as an input or param it would rerun every job; each job's rerun trigger is its own
# resolved parameters (params.stage).
STUDY_CONFIG = snapshot(config, f"{RES}/configs")
# the software of every rule (used with --use-conda)
ENV = "../envs/forgetlab.yaml"

REGULARIZERS = list(config["regularizers"])
# an entry with a `soup` option is k ingredient fine-tunes and a fan-in that averages them
SOUP_K = {reg: Soup(**entry_soup(config, reg)).k for reg in REGULARIZERS if entry_soup(config, reg) is not None}
METHODS = list(config["methods"])
SPLITS = config["splits"]
SEEDS = config["seeds"]
# sequential unlearning: {chunks, regularizers, methods, splits}; empty lists when there is none
SEQ = sequential_runs(config)
SEQ_STEPS = [str(j) for j in range(1, SEQ["chunks"] + 1)] if SEQ["methods"] else []
# training paths (forgetlab.paths): path name -> its stages in order; {} without a `paths:` section,
# and then no path level anywhere in the layout (AT_PATH is empty)
PATHS = study_paths(config)
STAGES = list(config.get("stages") or {})
AUTHORS = authors_stages(config)
AT_PATH = "{path}/" if PATHS else ""


def one_of(names):
    """A wildcard regex matching exactly these names (or nothing, if there are none)."""
    return "|".join(names) if names else "(?!x)x"


# a fine-tuned model under finetune/<regularizer>/seed<k>/: `target`, or `<split>/oracle`; a
# soup's ingredient i adds `/ingredient<i>`
FINETUNED_MODEL = rf"(target|({one_of(SPLITS)})/oracle)"
INGREDIENT = r"ingredient\d+"
# a stage model of a training path: stages/<s1>/.../<sj>/target or .../<split>/oracle
STAGE_MODEL = rf"{STAGE_ROOT}/({one_of(STAGES)})(/({one_of(STAGES)}))*/{FINETUNED_MODEL}"


wildcard_constraints:
    reg=one_of(REGULARIZERS),
    method=one_of(METHODS),
    split=one_of(SPLITS),
    seed=r"\d+",
    path=one_of(PATHS),


# --- paths: results/<study>/<stage>/<regularizer>/seed<k>/[<path>/]<split>/<method>/ -----------
# (the <path> level only with training paths; their fine-tunes are under finetune/.../stages/)
PRETRAINED = f"{RES}/pretrain/model"
FINETUNED = f"{RES}/finetune/{{reg}}/seed{{seed}}/{{tuned}}/model"
TARGET = f"{RES}/finetune/{{reg}}/seed{{seed}}/target/model"
ORACLE = f"{RES}/finetune/{{reg}}/seed{{seed}}/{{split}}/oracle/model"
UNLEARNED = f"{RES}/unlearn/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/{{method}}/model"
EVAL_PRETRAINED = f"{RES}/eval/pretrained/{{split}}"
EVAL = f"{RES}/eval/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/{{model}}"
# step j of a sequential run; a sibling of the split's methods ("sequential" is a reserved name),
# never inside a method's evaluation directory, which its job replaces whole
SEQ_UNLEARNED = f"{RES}/unlearn/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/sequential/{{method}}/step{{step}}/model"
SEQ_EVAL = f"{RES}/eval/{{reg}}/seed{{seed}}/{AT_PATH}{{split}}/sequential/{{method}}/step{{step}}"
EVAL_OUT = ["metrics.json", "samples.parquet"]


# --- a job's grid coordinates, from its wildcards ------------------------------------------------
# The functions below that a rule names (as an input or a param) are marked `@rule_function`.
# Snakemake reads such a function's signature (which of wildcards, input, output, ... it takes)
# two or three times at every call, that is for every job: ~5 % of planning a 10,000-job study.
# rule_function has it read once; Snakemake's own wrappers (snakemake.ioutils) use the same hook.


def rule_function(func):
    """`func`, its signature read once and for all (see above)."""
    if overwrite_function_params is not None:
        overwrite_function_params(func, inspect.signature(func).parameters)
    return func


def finetune_coords(w):
    """target, <split>/oracle, and either with /ingredient<i>; or a stage model of a path."""
    if w.tuned.startswith(f"{STAGE_ROOT}/"):
        prefix, role, split = parse_stage_model(w.tuned)
        c = {"model": role, "role": role, "regularizer": w.reg, "seed": int(w.seed), "stages": ",".join(prefix)}
        return {**c, "split": split} if split else c
    parts = w.tuned.split("/")
    role = "oracle" if "oracle" in parts else "target"
    c = {"model": role, "role": role, "regularizer": w.reg, "seed": int(w.seed)}
    if role == "oracle":
        c["split"] = parts[0]
    if parts[-1].startswith("ingredient"):
        c["ingredient"] = int(parts[-1].removeprefix("ingredient"))
    return c


def model_coords(w):
    """An evaluated or unlearned model: pretrained, target, oracle, a method, or a sequential step."""
    c = {"model": w.get("model", "unlearned"), "regularizer": w.get("reg"), "split": w.get("split"),
         "seed": int(w.seed) if "seed" in w.keys() else None, "method": w.get("method"), "path": w.get("path")}
    if c["model"] not in ("pretrained", "target", "oracle", "unlearned"):
        c.update(model="unlearned", method=w.model)
    if "step" in w.keys():
        c.update(model="sequential", sequential_step=int(w.step), sequential_chunks=SEQ["chunks"])
    return {k: v for k, v in c.items() if v is not None}


def job(stage, coords):
    """The job's resolved parameters (its rules' rerun trigger) and its command-line coordinates."""
    return {"stage": rule_function(lambda w: stage_params(config, stage, **coords(w))),
            "at": rule_function(lambda w: " ".join(f"--at {k}={v}" for k, v in coords(w).items()))}


@rule_function
def data_dir(w, input):
    return Path(input.qa).parent


@rule_function
def out_dir(w, output):
    return Path(output[0]).parent


# --- which model each job reads ---------------------------------------------------------------
def cell(w):
    """The job's grid cell, to fill a path pattern (None for what the job's wildcards lack)."""
    return {k: w.get(k) for k in ("reg", "seed", "split", "path", "method")}


@rule_function
def target_model(w):
    """The target of the job's grid cell: the regularizer's, or its path's (the last stage's model)."""
    if PATHS:
        return f"{RES}/finetune/{w.reg}/seed{w.seed}/{path_model(config, w.path, 'target')}/model"
    return TARGET.format(reg=w.reg, seed=w.seed)


@rule_function
def oracle_model(w):
    if PATHS:
        return f"{RES}/finetune/{w.reg}/seed{w.seed}/{path_model(config, w.path, 'oracle', w.split)}/model"
    return ORACLE.format(reg=w.reg, seed=w.seed, split=w.split)


@rule_function
def finetune_start(w):
    """What a fine-tune starts from: the pretrained model, or the previous stage's model of a path."""
    previous = previous_model(w.tuned, AUTHORS) if w.tuned.startswith(f"{STAGE_ROOT}/") else None
    return PRETRAINED if previous is None else f"{RES}/finetune/{w.reg}/seed{w.seed}/{previous}/model"


def eval_file(model, name="samples.parquet"):
    """A file of the evaluation of the job's `model` (target, oracle, ...) of the same grid cell."""
    return rule_function(lambda w: f"{EVAL.format(**cell(w), model=model)}/{name}")


@rule_function
def ingredients(w):
    """The k ingredient fine-tunes of a soup."""
    return [f"{RES}/finetune/{w.reg}/seed{w.seed}/{w.tuned}/ingredient{i}/model" for i in range(SOUP_K[w.reg])]


@rule_function
def sequential_start(w):
    """The model a sequential step starts from: the target for step 1, else the previous step's."""
    step = int(w.step)
    if step == 1:
        return target_model(w)
    return SEQ_UNLEARNED.format(**cell(w), step=step - 1)


@rule_function
def eval_inputs(w):
    """The evaluated model of EVAL's `model` (target, oracle or a method) and its reference tables."""
    models = {"target": target_model, "oracle": oracle_model}
    model = models[w.model](w) if w.model in models else UNLEARNED.format(**cell(w) | {"method": w.model})
    inputs = {"model": model, "qa": rules.prepare_data.output.qa}
    if w.model != "oracle":
        inputs["oracle"] = eval_file("oracle")(w)
    if w.model not in ("target", "oracle"):
        inputs["target"] = eval_file("target")(w)
    return inputs


@rule_function
def tables(w, input):
    """The evaluation's reference tables (`--oracle DIR`, `--target DIR`) from its inputs."""
    return " ".join(f"--{name} {Path(input[name]).parent}" for name in ("oracle", "target") if name in input.keys())


# --- what the study produces ------------------------------------------------------------------
def all_metric_files():
    # path: only where the pattern has it; each entry on its own paths (every path unless it names some)
    files = expand(f"{EVAL_PRETRAINED}/metrics.json", split=SPLITS)
    for reg in REGULARIZERS:
        files += expand(f"{EVAL}/metrics.json", model=["target", "oracle", *METHODS], reg=reg, seed=SEEDS,
                        split=SPLITS, path=entry_paths(config, reg))
    for reg in SEQ["regularizers"]:
        files += expand(f"{SEQ_EVAL}/metrics.json", reg=reg, seed=SEEDS, split=SEQ["splits"], method=SEQ["methods"],
                        step=SEQ_STEPS, path=entry_paths(config, reg))
    return files


def all_trajectory_dirs():
    """Every unlearned model directory of the grid, for the report to read its trajectory.csv
    (written when unlearn.eval_every > 0). A file inside a directory() output cannot itself be a
    Snakemake input, so the report takes the directories and skips those without the file."""
    return [d for reg in REGULARIZERS for d in expand(UNLEARNED, reg=reg, seed=SEEDS, split=SPLITS, method=METHODS,
                                                      path=entry_paths(config, reg))]


def path_outputs():
    """The report's cross-path tables and figure (forgetlab.path_report), with two paths or more."""
    if len(PATHS) < 2:
        return {}
    tables = {name: report(f"{RES}/{name}.csv", caption="../report/path_tables.rst", category="Training paths")
              for name in ("path_spread", "path_tests", "cross_oracle")}
    return {**tables, "path_trajectories": f"{RES}/path_trajectories.csv",
            "path_figure": report(f"{RES}/path_trajectories.png", caption="../report/path_trajectories.rst",
                                  category="Training paths")}


def study_outputs():
    return [f"{RES}/summary.parquet", f"{RES}/summary.csv", f"{RES}/forget_quality_vs_utility.png", f"{RES}.dvc", f"{DATA}.dvc"]


# --- cluster resources ---------------------------------------------------------------------------
# A rule's resources are the study config's resources.<stage> laid over resources.default. A key set
# in neither is left out, so the profile's default-resources (profiles/slurm/config.yaml) or the
# command line's --default-resources fill it; --set-resources RULE:KEY=VALUE overrides both.
# cpus_per_task, when unset, is the rule's threads (threads.<stage>). Local runs ignore these
# resources unless --resources sets a limit on one of them.
RESOURCE_STAGES = ("prepare_data", "pretrain", "finetune", "soup", "unlearn", "evaluate", "report", "track")


# Grouped jobs (the evaluations, `group: "evaluate"`) share one sbatch job, inside which the SLURM
# plugin runs them one at a time (given CPU binding, which nearly every cluster has). Every job
# takes one `group_slot`, and the slurm profile's `resources: {group_slot: 1}` caps each group job
# at one slot wide: a group job asks for the memory, CPUs and GPUs of its largest job (and the sum
# of its jobs' runtimes), not the sum over all of its jobs that could run side by side. The local
# scope applies the cap per group job only, never across jobs; local runs have no such cap.
resource_scopes:
    group_slot="local",


def stage_resources(stage):
    """The resources of one stage's jobs, from the study config (the schema checks the keys)."""
    if stage not in RESOURCE_STAGES:
        raise ValueError(f"unknown resource stage {stage!r}; known: {RESOURCE_STAGES}")
    section = config.get("resources") or {}
    return {"group_slot": 1, **(section.get("default") or {}), **(section.get(stage) or {})}
