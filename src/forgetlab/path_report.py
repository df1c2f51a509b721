"""The report's cross-path measures, for a study with two training paths or more (forgetlab.paths).

The summary then has a `path` column; the first path of the config's `paths:` is the reference.

* ``spread``: per (regularizer, method, split, seed), the spread over paths (max - min, and the
  sample sd) of forget quality (log10), model utility, steps_to_threshold and relearn_recovery;
  `method` is `target` for the fine-tuned target (steps_to_threshold is the unlearned models' only);
* ``path_tests``: each path against the reference path, per metric, on unlearned models
  (forgetlab.stats.paired_tests, factor `path`; collapsed pairs left out of forget quality): once
  over every regularizer entry (`regularizer` "all": the primary test, family "path") and once per
  regularizer (family "path_by_regularizer": whether the effect holds for each); Holm's correction
  within each family. The unit is the seed (UNITS): the entries of one seed share their stages'
  seeds (none and dropout see one data order), so the differences are averaged over the methods
  and regularizer entries of a seed, and the t-test runs on the seed means (3 in the default study).
  An entry that runs on one path only (its `paths` option, e.g. the A/A control) has no pair and
  no per-regularizer test, and no row in ``spread``;
* ``cross_oracle``: the forget quality of path A's unlearned model (and target) against path B's
  oracle, from the two evaluations' per-sample forget truth ratios (the forget_quality metric, a
  KS test); the diagonal (A = B) is the summary's own forget quality;
* ``mass``: along the unlearning trajectory, the seed mean per path of where the forget answers'
  probability goes: forget_prob, and the paraphrased and perturbed answers' probability when the
  trajectory records them (`forget_paraphrased_prob`, `forget_perturbed_prob`);
* ``figure``: those trajectories, a panel per (quantity, method), a line per path (and each
  path's oracle forget_prob, dashed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from forgetlab import stats
from forgetlab.metrics.model_utility import study_utility

PATH = "path"
ALL = "all"  # the regularizer of the path tests pooled over every regularizer entry
KEYS = ["regularizer", "method", "split", "seed"]
UNITS = ("split", "seed")  # the independent replicates of the path tests: a seed's differences are averaged
MEASURED = {"forget_quality": "log10", "model_utility": "identity", "steps_to_threshold": "identity",
            "relearn_recovery": "identity"}  # metric -> the scale it is compared on
MASS = {"forget_prob": "forget answer", "forget_paraphrased_prob": "paraphrased answer",
        "forget_perturbed_prob": "perturbed (wrong) answers"}  # trajectory column -> what it measures
SPREAD_COLUMNS = [*KEYS, "metric", "scale", "n_paths", "min", "max", "spread", "sd", "min_path", "max_path"]
CROSS_COLUMNS = [*KEYS, PATH, "oracle_path", "own_oracle", "forget_quality", "log10_forget_quality"]
OUTPUTS = ("path_spread.csv", "path_tests.csv", "cross_oracle.csv", "path_trajectories.csv", "path_trajectories.png")


def n_paths(table: pd.DataFrame) -> int:
    return int(table[PATH].nunique()) if PATH in table else 0


def per_path(fn, table: pd.DataFrame) -> pd.DataFrame:
    """fn(table), or with a `path` column: fn of each path's rows, with the path as a column."""
    if PATH not in table:
        return fn(table)
    parts = [fn(rows.drop(columns=PATH)).assign(path=path) for path, rows in table.groupby(PATH, sort=True)]
    out = pd.concat(parts, ignore_index=True) if parts else fn(table.drop(columns=PATH)).assign(path=None)
    return out[[PATH, *[c for c in out.columns if c != PATH]]]


def reference_path(order: list[str], *tables: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """The rows of the reference path (the first of `order`) of each table, and of no path (the
    pretrained model); tables without a `path` column as they are. The report's other figures
    show the reference path only."""
    if not order:
        return tables
    return tuple(t[t[PATH].isna() | (t[PATH] == order[0])] if PATH in t else t for t in tables)


def models(summary: pd.DataFrame) -> pd.DataFrame:
    """The unlearned models and the targets of the path grid, `method` the target's model name."""
    rows = summary[summary["model"].isin(["unlearned", "target"]) & summary[PATH].notna()].copy()
    rows["method"] = rows["method"].fillna(rows["model"])
    return rows


def measured(utility: str = "model_utility") -> dict[str, str]:
    """MEASURED with the study's utility (config report.utility) in model utility's place."""
    return study_utility(MEASURED, utility)


def spread(summary: pd.DataFrame, utility: str = "model_utility") -> pd.DataFrame:
    rows = []
    table = models(summary)
    for metric, scale in measured(utility).items():
        if metric not in table:
            continue
        values = table[[*KEYS, PATH, metric]].dropna(subset=[metric])
        values = values.assign(value=stats.SCALES[scale](values[metric]))
        for key, group in values.groupby(KEYS, sort=True):
            if len(group) < 2:  # an entry on one path only (its `paths` option): no spread over paths
                continue
            low, high = group.loc[group["value"].idxmin()], group.loc[group["value"].idxmax()]
            rows.append({**dict(zip(KEYS, key)), "metric": metric, "scale": scale, "n_paths": len(group),
                         "min": low["value"], "max": high["value"], "spread": high["value"] - low["value"],
                         "sd": float(group["value"].std(ddof=1)) if len(group) > 1 else 0.0,
                         "min_path": low[PATH], "max_path": high[PATH]})
    return pd.DataFrame(rows, columns=SPREAD_COLUMNS)


def path_tests(summary: pd.DataFrame, reference: str, utility: str = "model_utility") -> pd.DataFrame:
    """Each path against `reference` through stats.paired_tests (factor `path`), per regularizer;
    Holm over every testable row of the result. As in the report's paired tests, a pair with a
    collapsed model (the summary's `collapsed` flag, where present) is left out of forget quality."""
    unlearned = summary[(summary["model"] == "unlearned") & summary[PATH].notna()]
    tested = {m: scale for m, scale in measured(utility).items() if m in unlearned}
    exclude = {"forget_quality": "collapsed"} if "collapsed" in unlearned else None
    parts = []
    if len(unlearned):
        pooled = stats.paired_tests(unlearned, tested, baseline=reference, keys=("regularizer", "method", "split", "seed"),
                                    factor=PATH, exclude=exclude, units=UNITS)
        parts.append(pooled.rename(columns={"baseline": "reference_path"}).assign(regularizer=ALL, family=PATH))
    for reg, rows in unlearned.groupby("regularizer", sort=True):
        if rows[PATH].nunique() < 2:  # an entry on one path only: nothing to compare it with
            continue
        table = stats.paired_tests(rows, tested, baseline=reference, keys=("method", "split", "seed"), factor=PATH,
                                   exclude=exclude, units=UNITS)
        parts.append(table.rename(columns={"baseline": "reference_path"}).assign(regularizer=reg,
                                                                                family="path_by_regularizer"))
    if not parts:
        return pd.DataFrame(columns=["regularizer", PATH, "reference_path", *stats.TEST_COLUMNS[2:]])
    table = pd.concat(parts, ignore_index=True)
    return stats.holm_by_family(table[["regularizer", *[c for c in table.columns if c != "regularizer"]]].copy())


def evaluations(metric_files: list[Path]) -> pd.DataFrame:
    """One row per evaluated model of the path grid: its coordinates and its samples.parquet."""
    rows = []
    for path in map(Path, metric_files):
        record = json.loads(path.read_text())
        if record.get(PATH) and record["model"] in ("unlearned", "target", "oracle"):
            rows.append({**{k: record.get(k) for k in ("model", *KEYS, PATH)}, "samples": path.parent / "samples.parquet"})
    table = pd.DataFrame(rows, columns=["model", *KEYS, PATH, "samples"])
    table["method"] = table["method"].fillna(table["model"])
    return table


def forget_rows(file: Path) -> pd.DataFrame:
    samples = pd.read_parquet(file, columns=["split", "truth_ratio"])
    return samples[samples["split"] == "forget"]


def cross_oracle(metric_files: list[Path]) -> pd.DataFrame:
    """Forget quality of every unlearned model and target against the oracle of every path of its
    (regularizer, split, seed)."""
    from forgetlab.metrics import METRICS

    forget_quality = METRICS.get("forget_quality")
    table = evaluations(metric_files)
    oracles = table[table["model"] == "oracle"]
    cells = ["regularizer", "split", "seed"]
    rows = []
    for _, model in table[table["model"] != "oracle"].iterrows():
        samples = forget_rows(model["samples"])
        mine = oracles[(oracles[cells] == model[cells]).all(axis=1)]
        for _, oracle in mine.sort_values(PATH).iterrows():
            fq = float(forget_quality(samples, forget_rows(oracle["samples"])))
            rows.append({**{k: model[k] for k in KEYS}, PATH: model[PATH], "oracle_path": oracle[PATH],
                         "own_oracle": model[PATH] == oracle[PATH], "forget_quality": fq,
                         "log10_forget_quality": float(stats.log10_clipped([fq])[0])})
    out = pd.DataFrame(rows, columns=CROSS_COLUMNS)
    return out.sort_values([*KEYS, PATH, "oracle_path"]).reset_index(drop=True)


def mass(trajectories: pd.DataFrame) -> pd.DataFrame:
    """The seed mean of the recorded MASS columns per (regularizer, method, split, path, step)."""
    columns = [c for c in MASS if c in trajectories]
    keys = ["regularizer", "method", "split", PATH, "step"]
    if trajectories.empty or PATH not in trajectories:
        return pd.DataFrame(columns=[*keys, "n_seeds", *columns])
    grouped = trajectories.groupby(keys, sort=True)
    out = grouped[columns].mean()
    out.insert(0, "n_seeds", grouped["seed"].nunique())
    return out.reset_index()


def oracle_levels(summary: pd.DataFrame) -> dict[tuple, float]:
    """(regularizer, split, path) -> the seed mean of that path's oracle's forget_prob."""
    oracles = summary[(summary["model"] == "oracle") & summary[PATH].notna()]
    if "forget_prob" not in oracles:
        return {}
    return oracles.groupby(["regularizer", "split", PATH])["forget_prob"].mean().to_dict()


def figure(table: pd.DataFrame, order: list[str], path: Path, oracle: dict[tuple, float] | None = None) -> None:
    """A panel per (recorded MASS quantity, method), a line per path (and regularizer, split); on
    the forget_prob panels, each path's oracle level dashed in the path's colour."""
    from forgetlab import plots

    if table.empty:
        plots.placeholder(path, "no unlearning trajectory recorded (unlearn.eval_every is 0)")
        return
    plt = plots.plt
    quantities = [c for c in MASS if c in table]
    methods = sorted(table["method"].unique())
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(order)}
    styles = dict(zip(sorted(table["regularizer"].unique()), ["-", "--", ":", "-."] * 10))
    fig, axes = plt.subplots(len(quantities), len(methods), figsize=(4.2 * len(methods), 3.4 * len(quantities)),
                             sharex=True, squeeze=False)
    for i, quantity in enumerate(quantities):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            runs = table[table["method"] == method]
            for (reg, split, name), line in runs.groupby(["regularizer", "split", PATH], sort=True):
                label = name + (f" ({reg})" if len(styles) > 1 else "") + (f" {split}" if table["split"].nunique() > 1 else "")
                ax.plot(line["step"], line[quantity], color=colors.get(name), linestyle=styles[reg], marker="o",
                        markersize=3, label=label)
                level = (oracle or {}).get((reg, split, name)) if quantity == "forget_prob" else None
                if level is not None:
                    ax.axhline(level, color=colors.get(name), linestyle="--", linewidth=0.8, label=f"{name}: oracle")
            ax.set_title(f"{method}: {MASS[quantity]}", fontsize=9)
            ax.set_ylabel(f"{quantity} (seed mean)" if j == 0 else "")
            ax.set_xlabel("unlearning step")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    plots.save(fig, path)


def reference_of(order: list[str], summary: pd.DataFrame) -> str:
    """The reference path: the config's first, else the first by name."""
    return order[0] if order else sorted(summary[PATH].dropna().unique())[0]


def write(order: list[str], summary: pd.DataFrame, trajectories: pd.DataFrame, metric_files: list[Path],
          out: Path, tests: pd.DataFrame, utility: str = "model_utility") -> list[str]:
    """Write the OUTPUTS into `out` (`tests`: path_tests' table); returns their names."""
    trajectory_mass = mass(trajectories)
    tables = {"path_spread": spread(summary, utility), "path_tests": tests,
              "cross_oracle": cross_oracle(metric_files), "path_trajectories": trajectory_mass}
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    known = order or sorted(summary[PATH].dropna().unique())
    figure(trajectory_mass, known, out / "path_trajectories.png", oracle_levels(summary))
    return list(OUTPUTS)
