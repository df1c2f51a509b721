"""report: one tidy table of every evaluated model (a row per model, a column per metric) and
the forget-quality-vs-utility plot, both logged to MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from forgetlab.model import atomic_dir  # noqa: E402
from forgetlab.tracking import stage_run  # noqa: E402

STAGE_OF = {"pretrained": "pretrain", "target": "finetune", "oracle": "finetune"}
ID_COLUMNS = ["study", "stage", "model", "regularizer", "method", "split", "seed", "model_path",
              "regularizer_params", "method_params"]


def summarize(metric_files: list[Path]) -> pd.DataFrame:
    rows = []
    for path in metric_files:
        record = json.loads(Path(path).read_text())
        metrics = record.pop("metrics")
        record["stage"] = STAGE_OF.get(record["model"], "unlearn")
        for key in ("regularizer_params", "method_params"):  # the components' config, as JSON text
            record[key] = json.dumps(record[key], sort_keys=True) if record.get(key) is not None else None
        rows.append({**{k: record.get(k) for k in ID_COLUMNS}, **metrics})
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    order = {"pretrained": 0, "target": 1, "oracle": 2}
    table["_order"] = table["model"].map(lambda m: order.get(m, 3))
    table = table.sort_values(["split", "regularizer", "seed", "_order", "method"], na_position="first")
    return table.drop(columns="_order").reset_index(drop=True)


def plot(table: pd.DataFrame, path: Path) -> None:
    """Forget quality (log) against model utility: a panel per regularizer, a marker per method."""
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
            ax.scatter(group["model_utility"], group["forget_quality"].clip(lower=1e-300), marker=marker,
                       s=90 if label in markers else 50, color=color, edgecolor="k", linewidth=0.5, label=label)
        ax.set_yscale("log")
        ax.set_title(f"regularizer: {reg}")
        ax.set_xlabel("model utility")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget quality (KS p-value vs oracle)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


OUTPUTS = ("summary.parquet", "summary.csv", "forget_quality_vs_utility.png")


def run(params: dict, metric_files: list[Path], out: Path) -> None:
    """Write the OUTPUTS into `out` (results/<study>/), each replaced only once all are made."""
    with stage_run(params, out) as mlrun, atomic_dir(out / ".report") as tmp:
        table = summarize(metric_files)
        table.to_parquet(tmp / "summary.parquet", index=False)
        table.to_csv(tmp / "summary.csv", index=False)
        plot(table, tmp / "forget_quality_vs_utility.png")
        for name in OUTPUTS:
            mlrun.log_artifact(tmp / name)
    for name in OUTPUTS:
        os.replace(out / ".report" / name, out / name)
    (out / ".report").rmdir()
