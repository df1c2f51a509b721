"""report: the study's tables and figures, all logged to MLflow as artifacts of the report run.

Inputs: every evaluated model's metrics.json, and every unlearned model directory (or its
trajectory.csv directly); a directory without a trajectory.csv (unlearn.eval_every 0) is skipped.

Tables (CSV, and parquet where noted):
  summary      one row per model, one column per metric (parquet too); each step of a sequential
               run is a model of its own (`model` sequential, `sequential_step` j of `sequential_chunks`);
               `collapsed` flags an unlearned model with forget and retain prob below its oracle's forget prob
  stats        mean and 95% bootstrap CI over seeds per (regularizer, method, split, metric) (parquet too);
               `method` is the unlearning method, or `target`/`oracle` for the fine-tuned models
  paired_tests each regularizer against `none` on forget_quality (log10; pairs with a collapsed model
               left out), model_utility and the matched comparison's metrics where present: pairs
               matched on (path, method, split, seed), their differences averaged per target (path,
               split, seed) and t-tested over those units (forgetlab.stats), Holm-corrected per family
               (the regularizers; the A/A control, params `aa_controls`, on its own) (parquet too)
  findings     findings.md / findings.html: one sentence per test (forgetlab.findings)
  trajectories every recorded unlearning step of every unlearned model
environment.json: the environment every job of the study ran in (forgetlab.environment), with a
warning, also printed, when they ran in more than one (a study resumed on another node, ...).
Figures: the forget-quality-vs-utility plot, regularizer x method heatmaps of the headline
metrics, the unlearning trajectories (forget_prob against step; retain/forget paths), and the
sequential runs (each headline metric against the step).
The steps of sequential runs are only in the summary and their own figure: the statistics, the
paired tests, the heatmaps and the forget-quality-vs-utility plot are of the other models.
With training paths (forgetlab.paths) every model row has a `path`, the stats are per path, the
paired tests also pair on it, and the figures above show the first path; with two paths or more,
forgetlab.path_report adds the cross-path tables and their figure (path_report.OUTPUTS).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from forgetlab import environment, findings, path_report, plots, stats
from forgetlab.eval.trajectory import COLUMNS as TRAJECTORY_COLUMNS
from forgetlab.metrics.model_utility import study_utility
from forgetlab.model import atomic_dir
from forgetlab.tracking import stage_run

STAGE_OF = {"pretrained": "pretrain", "target": "finetune", "oracle": "finetune"}
ID_COLUMNS = ["study", "stage", "model", "regularizer", "method", "split", "seed", "sequential_step",
              "sequential_chunks", "model_path", "regularizer_params", "method_params"]
SEQUENTIAL = "sequential"  # the model of a sequential run's step
GRID = ["regularizer", "method", "split", "seed"]
BASELINE = "none"
# metric -> the scale it is tested on; the matched ones only where the trajectories recorded them.
# The study's utility (config report.utility) and its matched form take TOFU's places (tested_metrics)
TESTED = {"forget_quality": "log10", "model_utility": "identity", "matched_forget_quality": "log10",
          "matched_model_utility_lik": "identity"}
UTILITY = "model_utility"  # the default: TOFU's
COLLAPSED = "collapsed"  # forget and retain prob both below the oracle's forget prob (flag_collapsed)
EXCLUDE_COLLAPSED = {"forget_quality": COLLAPSED}  # no collapsed model counts as a good forgetter

OUTPUTS = ("summary.parquet", "summary.csv", "stats.parquet", "stats.csv", "paired_tests.parquet",
           "paired_tests.csv", "trajectories.csv", "forget_quality_vs_utility.png", "metric_heatmap.png",
           "trajectory_forget_prob.png", "trajectory_paths.png", "sequential_unlearning.png", "environment.json",
           "findings.md", "findings.html")


def with_path(columns: list[str], paths: bool) -> list[str]:
    """`columns` with `path` after `seed`, in a study with training paths (forgetlab.paths)."""
    i = columns.index("seed") + 1
    return [*columns[:i], "path", *columns[i:]] if paths else list(columns)


def summarize(metric_files: list[Path]) -> pd.DataFrame:
    records = [json.loads(Path(path).read_text()) for path in metric_files]
    ids = with_path(ID_COLUMNS, any(record.get("path") for record in records))
    rows = []
    for record in records:
        metrics = record.pop("metrics")
        record["stage"] = STAGE_OF.get(record["model"], "unlearn")
        for key in ("regularizer_params", "method_params"):  # the components' config, as JSON text
            record[key] = json.dumps(record[key], sort_keys=True) if record.get(key) is not None else None
        rows.append({**{k: record.get(k) for k in ids}, **metrics})
    table = pd.DataFrame(rows)
    for column in ("seed", "sequential_step", "sequential_chunks"):
        table[column] = table[column].astype("Int64")
    order = {"pretrained": 0, "target": 1, "oracle": 2, SEQUENTIAL: 4}
    table["_order"] = table["model"].map(lambda m: order.get(m, 3))
    keys = with_path(["split", "regularizer", "seed", "_order", "method", "sequential_step"], "path" in table)
    table = table.sort_values(keys, na_position="first")
    return table.drop(columns="_order").reset_index(drop=True)


def flag_collapsed(summary: pd.DataFrame) -> pd.DataFrame:
    """Add `collapsed`: 1.0 for an unlearned model (or sequential step) whose forget_prob and
    retain_prob are both below its oracle's forget_prob (same regularizer, seed and split), else
    0.0; NaN for the pretrained, target and oracle models, and where a value is missing.

    The oracle's forget_prob is the level of a fact a model never saw: a model that puts its retain
    answers below it has lost what it should keep, not just what it should forget. (Every unlearning
    run of the default model lowers retain_prob below the oracle's retain_prob, so that reading of
    "below the oracle's" would flag nearly every run; benchmarks/results/unlearn_lr_sweep.json.)"""
    out = summary.copy()
    out[COLLAPSED] = np.nan
    if not {"forget_prob", "retain_prob"} <= set(summary.columns):
        return out
    keys = with_path(["regularizer", "seed", "split"], "path" in summary)  # each path has its own oracle
    oracle = summary.loc[summary["model"] == "oracle", keys + ["forget_prob"]]
    unlearned = summary["model"].isin(["unlearned", SEQUENTIAL])
    level = summary.loc[unlearned, keys].merge(oracle, on=keys, how="left")["forget_prob"].to_numpy(dtype=float)
    mine = summary.loc[unlearned, ["forget_prob", "retain_prob"]].to_numpy(dtype=float)
    flag = np.where(np.isnan(mine).any(axis=1) | np.isnan(level), np.nan,
                    (mine < level[:, None]).all(axis=1).astype(float))
    out.loc[unlearned, COLLAPSED] = flag
    return out


def split_inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(metrics.json files, trajectory.csv files) from the report's inputs."""
    metric_files, trajectory_files = [], []
    for path in map(Path, paths):
        if path.name == "metrics.json":
            metric_files.append(path)
        elif path.name == "trajectory.csv":
            trajectory_files.append(path)
        elif path.is_dir():
            if (path / "trajectory.csv").exists():
                trajectory_files.append(path / "trajectory.csv")
        else:
            raise ValueError(f"report input {path}: expected a metrics.json, a trajectory.csv or a model directory")
    if not metric_files:
        raise ValueError("report: no metrics.json among the inputs")
    return metric_files, trajectory_files


def load_trajectories(files: list[Path], summary: pd.DataFrame) -> pd.DataFrame:
    """One row per recorded step, labelled with the grid coordinates of the unlearned model whose
    evaluation (metrics.json `model_path`) names the trajectory's directory."""
    unlearned = summary[summary["model"] == "unlearned"]
    by_dir = {Path(row["model_path"]).resolve(): row for row in unlearned.to_dict("records") if row["model_path"]}
    grid = with_path(GRID, "path" in summary)
    frames = []
    for path in files:
        row = by_dir.get(Path(path).parent.resolve())
        if row is None:
            raise ValueError(f"{path}: no evaluated unlearned model has model_path {Path(path).parent}")
        frame = pd.read_csv(path)
        missing = set(TRAJECTORY_COLUMNS) - set(frame.columns) - {"utility_lik", "utility_value_lik"}  # older ones lack them
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        frames.append(frame.reindex(columns=TRAJECTORY_COLUMNS).assign(**{k: row[k] for k in grid}))
    if not frames:
        return pd.DataFrame(columns=grid + TRAJECTORY_COLUMNS)
    table = pd.concat(frames, ignore_index=True)[grid + TRAJECTORY_COLUMNS]
    table["seed"] = table["seed"].astype("Int64")
    return table.sort_values(grid + ["step"]).reset_index(drop=True)


def metric_columns(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(summary[c])]


def long_metrics(summary: pd.DataFrame) -> pd.DataFrame:
    """(regularizer, method, split, seed, metric, value) for every fine-tuned and unlearned model;
    `method` is the model (target, oracle) where there is no method. log10_forget_quality is added.
    The steps of sequential runs are left out: they are not the method's unlearned model."""
    models = summary[summary["regularizer"].notna() & (summary["model"] != SEQUENTIAL)].copy()
    models["method"] = models["method"].fillna(models["model"])
    metrics = metric_columns(models)
    if "forget_quality" in models:
        fq = models["forget_quality"]
        models["log10_forget_quality"] = np.where(fq.notna(), stats.log10_clipped(fq.fillna(1.0)), np.nan)
        metrics.append("log10_forget_quality")
    return models.melt(id_vars=with_path(GRID, "path" in models), value_vars=metrics, var_name="metric", value_name="value")


def tested_metrics(utility: str = UTILITY) -> dict[str, str]:
    """TESTED with the study's utility and its matched likelihood form in the utility's places."""
    return study_utility(TESTED, utility)


def paired(summary: pd.DataFrame, aa_controls=(), utility: str = UTILITY) -> pd.DataFrame:
    """Each regularizer against the baseline; with training paths, pairs also match on the path.
    The unit of the test is a target (path, split, seed): its methods' differences are averaged."""
    tested = {m: scale for m, scale in tested_metrics(utility).items() if m in summary}
    units = (["path"] if "path" in summary else []) + ["split", "seed"]
    return stats.paired_tests(summary[summary["model"] == "unlearned"], tested, baseline=BASELINE,
                              keys=[*units, "method"], aa_controls=aa_controls, exclude=EXCLUDE_COLLAPSED, units=units)


def write_findings(study: str, tests: pd.DataFrame, tmp: Path, path_tests: pd.DataFrame | None = None) -> None:
    lines = findings.sections(tests, paths=path_tests)
    (tmp / "findings.md").write_text(findings.markdown(study, lines))
    (tmp / "findings.html").write_text(findings.to_html(study, lines))


def write_tables(tables: dict[str, pd.DataFrame], tmp: Path) -> None:
    for name, table in tables.items():
        table.to_csv(tmp / f"{name}.csv", index=False)
        if f"{name}.parquet" in OUTPUTS:
            table.to_parquet(tmp / f"{name}.parquet", index=False)


def draw(summary: pd.DataFrame, seed_stats: pd.DataFrame, trajectories: pd.DataFrame, tmp: Path,
         utility: str = UTILITY) -> None:
    methods = [m for m in dict.fromkeys(summary.loc[summary["model"] == "unlearned", "method"]) if m]
    plots.pareto(summary[summary["model"] != SEQUENTIAL], tmp / "forget_quality_vs_utility.png", utility)
    plots.heatmaps(seed_stats, sorted(methods), tmp / "metric_heatmap.png", plots.headline(utility))
    plots.trajectories(trajectories, summary, tmp / "trajectory_forget_prob.png")
    plots.trajectory_paths(trajectories, summary, tmp / "trajectory_paths.png")
    plots.sequential(summary, tmp / "sequential_unlearning.png")


def log_tests(mlrun, tests: pd.DataFrame) -> None:
    """The paired tests as metrics too: test/<regularizer>/<metric>/{p_value,p_holm,mean_diff,testable}."""
    values = {}
    for row in tests.itertuples():
        for key in ("p_value", "p_holm", "mean_diff", "testable"):
            values[f"test/{row.regularizer}/{row.metric}/{key}"] = float(getattr(row, key))
    if values:
        mlrun.log_metrics(values)


def study_environment(params: dict, inputs: list[Path], mlrun, out: Path) -> dict:
    """The environments of every job upstream of the report's inputs, and of the report itself;
    printed as one line, with a warning line when the jobs ran in more than one environment."""
    jobs = environment.upstream(inputs)
    own = getattr(mlrun, "job", None)
    if own is not None:
        jobs[os.path.relpath(out)] = own.record
    summary = {"study": params["study"], **environment.study_environment(jobs)}
    print(f"report: {environment.describe(summary)}", file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    mlrun.log_metrics({"environment_warnings": len(summary["warnings"])})
    return summary


def run(params: dict, inputs: list[Path], out: Path) -> None:
    """Write the OUTPUTS into `out` (results/<study>/), each replaced only once all are made."""
    metric_files, trajectory_files = split_inputs(inputs)
    order = list(params.get("paths") or {})  # training paths, the first the reference (forgetlab.paths)
    utility = params.get("utility", UTILITY)  # the utility the tests, findings and plots use
    with stage_run(params, out) as mlrun, atomic_dir(out / ".report") as tmp:
        summary = flag_collapsed(summarize(metric_files))
        trajectories = load_trajectories(trajectory_files, summary)
        seed_stats = path_report.per_path(stats.seed_stats, long_metrics(summary))
        tests = paired(summary, params.get("aa_controls", ()), utility)
        write_tables({"summary": summary, "stats": seed_stats, "paired_tests": tests, "trajectories": trajectories}, tmp)
        path_tests = (path_report.path_tests(summary, path_report.reference_of(order, summary), utility)
                      if path_report.n_paths(summary) > 1 else None)
        write_findings(params["study"], tests, tmp, path_tests)
        draw(*path_report.reference_path(order, summary, seed_stats, trajectories), tmp, utility)
        outputs = OUTPUTS
        if path_tests is not None:  # the cross-path measures
            outputs += tuple(path_report.write(order, summary, trajectories, metric_files, tmp, path_tests, utility))
        (tmp / "environment.json").write_text(json.dumps(study_environment(params, inputs, mlrun, out), indent=1,
                                                         sort_keys=True, default=str) + "\n")
        log_tests(mlrun, tests)
        for name in outputs:
            mlrun.log_artifact(tmp / name)
    for name in outputs:
        os.replace(out / ".report" / name, out / name)
    (out / ".report").rmdir()
