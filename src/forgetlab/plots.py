"""The report's figures, each from a table the report also writes (summary, stats, trajectories).

* ``pareto``: forget quality (log) against model utility, a panel per regularizer;
* ``heatmaps``: regularizer x method, the seed mean of each headline metric (CI in the cell);
* ``trajectories``: forget_prob against the unlearning step, a panel per regularizer (and split);
* ``trajectory_paths``: the same runs as paths in the (retain_prob, forget_prob) plane;
* ``sequential``: sequential unlearning, each headline metric against the step (0 = the target).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from forgetlab.metrics.model_utility import study_utility  # noqa: E402
from forgetlab.stats import log10_clipped  # noqa: E402

SEQUENTIAL = {  # metric in the summary -> panel title of the sequential figure
    "forget_quality": "forget quality (log10 KS p), higher = closer to oracle",
    "forget_prob": "forget prob. (whole forget split), lower = more forgotten",
    "model_utility": "model utility, higher = better",
}
HEADLINE = {  # metric in the stats table -> panel title
    "log10_forget_quality": "forget quality (log10 KS p), higher = closer to oracle",
    "model_utility": "model utility, higher = better",
    "forget_prob": "forget prob., lower = more forgotten",
    "steps_to_threshold": "steps to oracle's forget prob. (censored)",
}
UTILITY_TITLE = {"model_utility": "model utility, higher = better",
                 "model_utility_value": "model utility on the value, higher = better"}


def headline(utility: str = "model_utility") -> dict[str, str]:
    """HEADLINE with the study's utility (config report.utility) in model utility's place."""
    return {m: UTILITY_TITLE.get(m, title) for m, title in study_utility(HEADLINE, utility).items()}


def method_colors(methods) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(methods))}


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def placeholder(path: Path, text: str) -> None:
    """A figure that says why there is nothing to draw (Snakemake still expects the file)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.axis("off")
    save(fig, path)


def pareto(table: pd.DataFrame, path: Path, utility: str = "model_utility") -> None:
    """Forget quality (log) against the study's model utility (`utility`, a column): a panel per
    regularizer, a marker per method."""
    if not {"forget_quality", utility} <= set(table.columns):  # e.g. a muse study's metrics
        placeholder(path, f"the study computes no forget_quality and {utility}")
        return
    table = table[table["regularizer"].notna() & table["forget_quality"].notna()]
    regs = sorted(table["regularizer"].unique())
    fig, axes = plt.subplots(1, max(1, len(regs)), figsize=(4.5 * max(1, len(regs)), 4), sharex=True, sharey=True, squeeze=False)
    markers = {"target": ("X", "black"), "oracle": ("*", "gold")}
    others = iter(["o", "s", "^", "v", "D", "P", "<", ">", "h", "p"] * 5)
    method_marker = {m: next(others) for m in sorted(table["method"].dropna().unique())}
    for ax, reg in zip(axes[0], regs):
        sub = table[table["regularizer"] == reg]
        for label, group in sub.groupby(sub["method"].fillna(sub["model"])):
            marker, color = markers.get(label, (method_marker.get(label, "o"), None))
            ax.scatter(group[utility], group["forget_quality"].clip(lower=1e-300), marker=marker,
                       s=90 if label in markers else 50, color=color, edgecolor="k", linewidth=0.5, label=label)
        ax.set_yscale("log")
        ax.set_title(f"regularizer: {reg}")
        ax.set_xlabel(UTILITY_TITLE.get(utility, utility).split(",")[0])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget quality (KS p-value vs oracle)")
    axes[0][-1].legend(fontsize=8, loc="best")
    save(fig, path)


def cell_text(row) -> str:
    text = f"{row['mean']:.3g}"
    if row["n_seeds"] > 1:
        text += f"\n[{row['ci_low']:.2g}, {row['ci_high']:.2g}]"
    return text


def heatmaps(stats: pd.DataFrame, methods: list[str], path: Path, metrics: dict[str, str] = HEADLINE) -> None:
    """Regularizer x method heatmaps, one per headline metric (two panels a row) and split.

    Each cell is the seed mean (with its bootstrap CI when there are 2+ seeds); empty cells are grey.
    """
    stats = stats[stats["method"].isin(methods) & stats["metric"].isin(metrics)]
    if stats.empty:
        placeholder(path, "no unlearned model has a headline metric")
        return
    regs = sorted(stats["regularizer"].unique(), key=lambda r: (r != "none", r))  # the baseline first
    methods = [m for m in methods if m in set(stats["method"])]
    splits = sorted(stats["split"].unique())
    width, height = 1.1 * len(methods) + 2.2, 0.55 * len(regs) + 1.8
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)  # per split
    fig, axes = plt.subplots(nrows * len(splits), ncols, figsize=(width * ncols, height * nrows * len(splits)), squeeze=False)
    for ax in axes.flat[len(metrics) * len(splits):]:
        ax.axis("off")
    for r, split in enumerate(splits):
        for k, (metric, title) in enumerate(metrics.items()):
            ax = axes[r * nrows + k // ncols][k % ncols]
            sub = stats[(stats["split"] == split) & (stats["metric"] == metric)].set_index(["regularizer", "method"])
            grid = np.full((len(regs), len(methods)), np.nan)
            for i, reg in enumerate(regs):
                for j, method in enumerate(methods):
                    if (reg, method) in sub.index:
                        grid[i, j] = sub.loc[(reg, method), "mean"]
            cmap = plt.get_cmap("viridis").with_extremes(bad="0.9")
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            lo, hi = np.nanmin(grid) if np.isfinite(grid).any() else 0, np.nanmax(grid) if np.isfinite(grid).any() else 1
            for i, reg in enumerate(regs):
                for j, method in enumerate(methods):
                    if (reg, method) in sub.index:
                        dark = hi > lo and (grid[i, j] - lo) / (hi - lo) < 0.5
                        ax.text(j, i, cell_text(sub.loc[(reg, method)]), ha="center", va="center", fontsize=7,
                                color="white" if dark else "black")
            ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
            ax.set_yticks(range(len(regs)), regs, fontsize=8)
            ax.set_title(f"{title}\n{split}" if len(splits) > 1 else title, fontsize=9)
    save(fig, path)


def seed_mean(traj: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The mean over seeds at each recorded step of one (regularizer, split, method)."""
    return traj.groupby("step", as_index=False)[columns].mean().sort_values("step")


def trajectory_grid(traj: pd.DataFrame, per_row: int = 4):
    """A panel per (split, regularizer): up to per_row regularizers a row, each split on new rows.
    Returns the regularizers, the splits, the figure and {(split, regularizer): axis}."""
    regs = sorted(traj["regularizer"].unique(), key=lambda r: (r != "none", r))  # the baseline first
    splits = sorted(traj["split"].unique())
    ncols = min(per_row, len(regs))
    nrows = -(-len(regs) // ncols)  # per split
    fig, axes = plt.subplots(nrows * len(splits), ncols, figsize=(4.2 * ncols, 3.6 * nrows * len(splits)),
                             sharex=True, sharey=True, squeeze=False)
    panels = {}
    for r, split in enumerate(splits):
        for c, reg in enumerate(regs):
            ax = panels[split, reg] = axes[r * nrows + c // ncols][c % ncols]
            ax.set_title(f"regularizer: {reg}" + (f" ({split})" if len(splits) > 1 else ""), fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelbottom=True)  # shared x, but rows above an unused panel need labels too
            if c % ncols == 0:
                ax.set_ylabel("forget prob.")
        for c in range(len(regs), nrows * ncols):  # the unused panels of the split's last row
            axes[r * nrows + c // ncols][c % ncols].axis("off")
    return regs, splits, fig, panels


def oracle_level(summary: pd.DataFrame, reg: str, split: str, column: str) -> float:
    rows = summary[(summary["model"] == "oracle") & (summary["regularizer"] == reg) & (summary["split"] == split)]
    return float(rows[column].mean()) if column in rows and len(rows) else float("nan")


def trajectory_figure(traj: pd.DataFrame, path: Path, xlabel: str, draw_runs, draw_oracle) -> None:
    """The frame of both trajectory figures: a placeholder when nothing was recorded, else the
    trajectory_grid where each panel gets draw_runs(ax, runs, color, method) for each method (its
    rows of that panel), then draw_oracle(ax, regularizer, split) and the x label; the legend sits
    in the first row's last panel."""
    if traj.empty:
        placeholder(path, "no unlearning trajectory recorded (unlearn.eval_every is 0)")
        return
    colors = method_colors(traj["method"].unique())
    regs, splits, fig, panels = trajectory_grid(traj)
    for (split, reg), ax in panels.items():
        panel = traj[(traj["regularizer"] == reg) & (traj["split"] == split)]
        for method, runs in panel.groupby("method"):
            draw_runs(ax, runs, colors[method], method)
        draw_oracle(ax, reg, split)
        ax.set_xlabel(xlabel)
    panels[splits[0], regs[-1]].legend(fontsize=7, loc="best")
    save(fig, path)


def trajectories(traj: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    """forget_prob against the step: a panel per regularizer (and split), a line per method (the
    seed mean; thin lines are the seeds), the oracle's forget_prob dashed."""
    def draw_runs(ax, runs, color, method):
        if runs["seed"].nunique() > 1:
            for _, one in runs.groupby("seed"):
                ax.plot(one["step"], one["forget_prob"], color=color, alpha=0.25, linewidth=0.8)
        mean = seed_mean(runs, ["forget_prob"])
        ax.plot(mean["step"], mean["forget_prob"], color=color, marker="o", markersize=3, label=method)

    def draw_oracle(ax, reg, split):
        level = oracle_level(summary, reg, split, "forget_prob")
        if np.isfinite(level):
            ax.axhline(level, color="k", linestyle="--", linewidth=1, label="oracle")

    trajectory_figure(traj, path, "unlearning step", draw_runs, draw_oracle)


def trajectory_paths(traj: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    """Each method's seed-mean path from the target (circle) to its last step (triangle) in the
    (retain_prob, forget_prob) plane; the oracle (star) is where the evaluation put it."""
    def draw_runs(ax, runs, color, method):
        mean = seed_mean(runs, ["retain_prob", "forget_prob"])
        x, y = mean["retain_prob"], mean["forget_prob"]
        ax.plot(x, y, color=color, linewidth=1.2, label=method)
        ax.scatter(x.iloc[:1], y.iloc[:1], color=color, marker="o", s=20)
        ax.scatter(x.iloc[-1:], y.iloc[-1:], color=color, marker="^", s=35, edgecolor="k", linewidth=0.5)

    def draw_oracle(ax, reg, split):
        x, y = (oracle_level(summary, reg, split, col) for col in ("retain_prob", "forget_prob"))
        if np.isfinite(x) and np.isfinite(y):
            ax.scatter([x], [y], marker="*", s=120, color="gold", edgecolor="k", linewidth=0.5, label="oracle", zorder=3)

    trajectory_figure(traj, path, "retain prob.", draw_runs, draw_oracle)


def sequential_steps(summary: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """(regularizer, method, split, step, metric...) of every sequential run: the seed mean of each
    step's evaluation, and step 0 the mean of its target's evaluations over the same seeds."""
    seq = summary[summary["model"] == "sequential"]
    rows = []
    for (reg, method, split), run in seq.groupby(["regularizer", "method", "split"]):
        target = summary[(summary["model"] == "target") & (summary["regularizer"] == reg) & (summary["split"] == split)
                         & summary["seed"].isin(set(run["seed"]))]
        steps = [(0, target)] + [(int(step), one) for step, one in run.groupby("sequential_step")]
        for step, models in steps:
            if len(models):
                rows.append({"regularizer": reg, "method": method, "split": split, "step": step,
                             **{m: float(models[m].mean()) for m in metrics}})
    return pd.DataFrame(rows, columns=["regularizer", "method", "split", "step", *metrics])


def sequential(summary: pd.DataFrame, path: Path, metrics: dict[str, str] = SEQUENTIAL) -> None:
    """Sequential unlearning: each metric (a panel; a row of panels per split) against the step,
    0 being the target and k the last step, a line per (regularizer, method), the seed mean; the
    oracle's level dashed (a dash pattern per regularizer)."""
    metrics = {m: title for m, title in metrics.items() if m in summary}
    table = sequential_steps(summary, list(metrics)) if "sequential_step" in summary else pd.DataFrame()
    if table.empty or not metrics:
        placeholder(path, "no sequential unlearning run in this study (the config's `sequential` section)")
        return
    splits = sorted(table["split"].unique())
    runs = sorted({(r, m) for r, m in zip(table["regularizer"], table["method"])})
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    colors = {run: cmap(i % cmap.N) for i, run in enumerate(runs)}
    fig, axes = plt.subplots(len(splits), len(metrics), figsize=(4.4 * len(metrics), 3.6 * len(splits)), squeeze=False)
    for r, split in enumerate(splits):
        for c, (metric, title) in enumerate(metrics.items()):
            ax = axes[r][c]
            scale = log10_clipped if metric == "forget_quality" else (lambda v: np.asarray(v, dtype=float))
            for (reg, method), line in table[table["split"] == split].groupby(["regularizer", "method"]):
                line = line.sort_values("step")
                ax.plot(line["step"], scale(line[metric]), marker="o", markersize=4, color=colors[reg, method],
                        label=f"{reg} / {method}")
            for i, reg in enumerate(sorted({reg for reg, _ in runs})):
                level = oracle_level(summary, reg, split, metric)
                if np.isfinite(level):
                    ax.axhline(float(scale([level])[0]), color="0.4", linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                               label="oracle" if len(runs) == 1 else f"oracle ({reg})")
            ax.set_title(f"{title}\n{split}" if len(splits) > 1 else title, fontsize=9)
            ax.set_xlabel("sequential step (0 = target)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    save(fig, path)
