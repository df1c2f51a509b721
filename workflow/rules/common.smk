# The study grid and the paths of every artifact. The only place in the workflow with logic.
import json

from forgetlab.config import check_config, stage_params, stage_threads

check_config(config)  # component names and parameters against the registries; names the key

STUDY = config["study"]
DATA = f"data/{STUDY}"
RES = f"results/{STUDY}"
LOGS = f"{RES}/logs"

REGULARIZERS = list(config["regularizers"])
METHODS = list(config["methods"])
SPLITS = config["splits"]
SEEDS = config["seeds"]


wildcard_constraints:
    reg="|".join(REGULARIZERS),
    method="|".join(METHODS),
    split="|".join(SPLITS),
    seed=r"\d+",


# --- paths: results/<study>/<stage>/<regularizer>/seed<k>/<split>/<method>/ -------------------
PRETRAINED = f"{RES}/pretrain/model"
TARGET = f"{RES}/finetune/{{reg}}/seed{{seed}}/target/model"
ORACLE = f"{RES}/finetune/{{reg}}/seed{{seed}}/{{split}}/oracle/model"
UNLEARNED = f"{RES}/unlearn/{{reg}}/seed{{seed}}/{{split}}/{{method}}/model"
EVAL_PRETRAINED = f"{RES}/eval/pretrained/{{split}}"
EVAL = f"{RES}/eval/{{reg}}/seed{{seed}}/{{split}}/{{model}}"


def eval_dir(w, model):
    return EVAL.format(reg=w.reg, seed=w.seed, split=w.split, model=model)


def params_json(stage, **coords):
    """The resolved parameters of one job, as the JSON its `forgetlab <stage> --params` reads."""
    return json.dumps(stage_params(config, stage, **coords), sort_keys=True)


def coords(w, **extra):
    """Grid coordinates of a job from its wildcards."""
    c = {"regularizer": w.get("reg"), "seed": int(w.seed) if "seed" in w.keys() else None,
         "split": w.get("split"), "method": w.get("method")}
    return {k: v for k, v in {**c, **extra}.items() if v is not None}


def all_metric_files():
    grid = dict(reg=REGULARIZERS, seed=SEEDS, split=SPLITS)
    return (
        expand(f"{EVAL_PRETRAINED}/metrics.json", split=SPLITS)
        + expand(f"{RES}/eval/{{reg}}/seed{{seed}}/{{split}}/{{model}}/metrics.json", model=["target", "oracle"], **grid)
        + expand(f"{RES}/eval/{{reg}}/seed{{seed}}/{{split}}/{{model}}/metrics.json", model=METHODS, **grid)
    )


def study_outputs():
    return [f"{RES}/summary.parquet", f"{RES}/summary.csv", f"{RES}/forget_quality_vs_utility.png", f"{RES}.dvc", f"{DATA}.dvc"]
