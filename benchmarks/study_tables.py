"""Write docs/results.md (the full result tables and findings) and the README's headline table,
the instrument's figures (issue 13's section 3 targets) and the findings from a finished study's
outputs, so that no number in either is typed by hand.

    python benchmarks/study_tables.py [--study benchmark] [--config config/config.yaml] [--readme README.md]
                                      [--out docs/results.md]

Model utility in the headline table and the instrument's criterion is the study's (the config's
`report.utility`, TOFU's `model_utility` by default); TOFU's figures are printed beside it.

The README's table sits between the markers `<!-- results:start -->` and `<!-- results:end -->`;
the figure `forget_quality_vs_utility.png` is copied to docs/figures/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = {"forget_quality": "forget quality", "model_utility_value": "model utility (value)",
           "model_utility": "model utility (TOFU)", "forget_prob": "forget prob",
           "retain_prob": "retain prob", "mia_loss": "MIA (loss) AUC", "steps_to_threshold": "steps to threshold",
           "threshold_reached": "reached oracle", "matched_forget_quality": "matched forget quality",
           "matched_model_utility_value_lik": "matched utility (value, no ROUGE)",
           "matched_model_utility_lik": "matched utility (TOFU, no ROUGE)", "collapsed": "collapsed"}
MATCHED_UTILITY = {"model_utility": "model_utility_lik", "model_utility_value": "model_utility_value_lik"}


def fmt(x: float) -> str:
    if pd.isna(x):
        return "–"
    return f"{x:.2g}" if abs(x) < 1e-2 and x != 0 else f"{x:.3f}"


def count(x: float) -> str:
    """A whole number as one (trajectory points), anything else as fmt does."""
    return str(int(x)) if pd.notna(x) and float(x).is_integer() and abs(x) >= 1 else fmt(x)


def table(frame: pd.DataFrame, index: list[str], columns: dict[str, str]) -> str:
    cols = [c for c in columns if c in frame]
    head = "| " + " | ".join(index + [columns[c] for c in cols]) + " |"
    rule = "|" + "---|" * (len(index) + len(cols))
    rows = ["| " + " | ".join([f"`{r[i]}`" for i in index] + [fmt(r[c]) for c in cols]) + " |" for _, r in frame.iterrows()]
    return "\n".join([head, rule, *rows])


def headline(summary: pd.DataFrame, utility: str = "model_utility") -> pd.DataFrame:
    """Per regularizer: the target's forget quality against its oracle, and the unlearned models'
    median forget quality and mean model utility (the study's, `utility`) over the methods."""
    rows = []
    for reg, g in summary[summary.regularizer.notna()].groupby("regularizer", sort=False):
        target, oracle = g[g.model == "target"], g[g.model == "oracle"]
        unlearned = g[g.model == "unlearned"]
        rows.append({"regularizer": reg, "target_fq": target.forget_quality.mean(),
                     "oracle_mu": oracle[utility].mean(), "target_mu": target[utility].mean(),
                     "unlearned_fq": float(np.median(unlearned.forget_quality)) if len(unlearned) else np.nan,
                     "unlearned_mu": unlearned[utility].mean()})
    return pd.DataFrame(rows)


def instrument(summary: pd.DataFrame, trajectories: pd.DataFrame | None, walltime: dict | None,
               utility: str = "model_utility") -> pd.DataFrame:
    """Issue 13's section 3 targets, each measured on the study (means over regularizers and seeds);
    model utility is the study's (`utility`, its config's report.utility), TOFU's beside it."""
    def mean(model: str, column: str, regularizer: str | None = None) -> float:
        rows = summary[(summary.model == model) & ((summary.regularizer == regularizer) if regularizer else True)]
        return float(rows[column].mean()) if column in rows and len(rows) else np.nan

    def cloze(regularizer: str) -> float:
        column = "form_cloze_value_forget_prob"
        return mean("target", column, regularizer) / mean("oracle", column, regularizer)

    entries = sorted(summary.loc[summary.model == "target", "regularizer"].dropna().unique())

    unlearned = summary[summary.model == "unlearned"]
    def spearman(rows: pd.DataFrame, column: str = utility, other: str = "retain_prob") -> float:
        return (spearmanr(rows[column], rows[other]).statistic
                if {column, other} <= set(rows.columns) and len(rows) > 2 else np.nan)

    rho = spearman(unlearned)
    paths = "path" in unlearned and unlearned.path.notna().any()
    by_path = [spearman(g) for _, g in unlearned.groupby("path")] if paths else []
    by_entry = [spearman(g) for _, g in unlearned.groupby("regularizer")] if len(unlearned) else []
    # unlearning's own damage: each unlearned model's retain prob and utility minus its target's
    # (the same regularizer entry, path, split and seed), so that a regularizer's offset in utility
    # from fine-tuning (e.g. world knowledge it cost) does not decide the ranks
    keys = [c for c in ("regularizer", "path", "split", "seed") if c in summary and summary[c].notna().any()]
    targets = summary.loc[summary.model == "target", keys + ["retain_prob", utility]]
    paired = unlearned.merge(targets, on=keys, suffixes=("", "_target")) if len(unlearned) else unlearned
    rho_change = (spearmanr(paired[utility] - paired[f"{utility}_target"],
                            paired.retain_prob - paired.retain_prob_target).statistic if len(paired) > 2 else np.nan)
    run = [c for c in ("regularizer", "seed", "path", "split", "method") if trajectories is not None and c in trajectories]
    points = (trajectories.groupby(run, dropna=False).size().min()
              if trajectories is not None and len(trajectories) else np.nan)
    fq = (walltime or {}).get("fq_target_vs_oracle", {})
    fq_aa = list(((walltime or {}).get("fq_oracle_seed1_vs_oracle") or {}).values())
    rows = [
        ("target's multiple-choice accuracy on forget", ">= 0.6", mean("target", "form_mc_forget_accuracy")),
        ("oracle's multiple-choice accuracy on forget", "<= 0.35", mean("oracle", "form_mc_forget_accuracy")),
        ("paraphrased-question prob on forget, target / oracle", ">= 3",
         mean("target", "form_paraphrased_forget_prob") / mean("oracle", "form_paraphrased_forget_prob")),
        ("cloze (fill-in-the-blank) prob of the value on forget, target / oracle", ">= 3",
         mean("target", "form_cloze_value_forget_prob") / mean("oracle", "form_cloze_value_forget_prob")),
        ("the same on the `none` targets alone (the baseline entry)", "-", cloze("none") if "none" in entries else np.nan),
        ("the same, the smallest over the regularizer entries (a regularizer may teach the facts less)", "-",
         min(cloze(e) for e in entries) if entries else np.nan),
        ("the same per token (the value's tokens and its end, a geometric mean; docs/metrics.md)", "-",
         mean("target", "form_cloze_forget_prob") / mean("oracle", "form_cloze_forget_prob")),
        ("pretrained model's world-facts multiple-choice accuracy (chance 0.25)", ">= 0.6",
         mean("pretrained", "world_facts_option_accuracy")),
        ("target's world-facts multiple-choice accuracy (not a target; collateral damage of fine-tuning)", "-",
         mean("target", "world_facts_option_accuracy")),
        (f"Spearman rank correlation of model utility (the study's, `{utility}`) with retain prob, unlearned models",
         ">= 0.8", rho),
        ("the same within each training path (the smallest; the paths differ in world knowledge)", ">= 0.8",
         min(by_path) if by_path else np.nan),
        ("the same within each regularizer entry (the smallest; the entries differ in utility after fine-tuning)", "-",
         min(by_entry) if by_entry else np.nan),
        ("the same on each unlearned model's change from its own target (utility and retain prob minus the target's)",
         "-", rho_change),
        ("the same with TOFU's `model_utility` (whole-answer truth ratios and option probs)", "-",
         spearman(unlearned, "model_utility") if utility != "model_utility" else np.nan),
        ("the same within each training path (the smallest)", "-",
         min(spearman(g, "model_utility") for _, g in unlearned.groupby("path"))
         if paths and utility != "model_utility" else np.nan),
        ("Spearman of the matched comparison's utility (the same without ROUGE) with model utility, "
         "unlearned models at the end of the run", "-", spearman(unlearned, MATCHED_UTILITY.get(utility, ""), utility)),
        ("share of unlearned runs reaching the oracle's forget prob", ">= 0.5", float(unlearned.threshold_reached.mean())
         if "threshold_reached" in unlearned else np.nan),
        ("share of unlearned runs collapsed", "flagged", float(unlearned.collapsed.mean())
         if "collapsed" in unlearned else np.nan),
        ("recorded trajectory points per run (fewest)", ">= 10", points),
        ("forget quality, target vs oracle (largest over regularizers)", "<= 1e-5", max(fq.values()) if fq else np.nan),
        ("forget quality, oracle of seed 1 vs oracle", ">= 0.05", min(fq_aa) if fq_aa else np.nan),
    ]
    return pd.DataFrame(rows, columns=["figure", "target", "measured"])


def findings_excerpt(text: str) -> str:
    """The findings page's significant findings and A/A control sections (its headings demoted)."""
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line.startswith(("## Significant", "## A/A"))
        if keep:
            out.append("#" + line if line.startswith("## ") else line)
    return "\n".join(out).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="benchmark")
    ap.add_argument("--config", default="config/config.yaml", help="the study's config (its report.utility)")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--out", default="docs/results.md")
    args = ap.parse_args()
    res = Path("results") / args.study
    summary = pd.read_csv(res / "summary.csv")
    date = datetime.date.fromtimestamp((res / "summary.csv").stat().st_mtime).isoformat()
    seeds = sorted(summary.seed.dropna().astype(int).unique())

    utility = (yaml.safe_load(Path(args.config).read_text()).get("report") or {}).get("utility", "model_utility")
    head = headline(summary, utility)
    short = table(head, ["regularizer"], {"target_fq": "target vs oracle: forget quality", "target_mu": "target utility",
                                          "oracle_mu": "oracle utility", "unlearned_fq": "unlearned: median forget quality",
                                          "unlearned_mu": "unlearned: mean utility"})
    trajectories = pd.read_csv(res / "trajectories.csv") if (res / "trajectories.csv").exists() else None
    walltime_file = Path("benchmarks/results/study_walltime.json")
    walltime = json.loads(walltime_file.read_text()) if walltime_file.exists() else None
    inst = instrument(summary, trajectories, walltime, utility)
    inst_table = "\n".join(["| figure | target | measured |", "|---|---|---|",
                            *[f"| {r.figure} | {r.target} | {count(r.measured)} |" for r in inst.itertuples()]])
    findings = (res / "findings.md").read_text() if (res / "findings.md").exists() else ""
    readme = Path(args.readme).read_text()
    block = (f"{START}\nThe default study, run on {date} (`python benchmarks/study_walltime.py`, seed(s) "
             f"{', '.join(map(str, seeds))}; tables written by `python benchmarks/study_tables.py`):\n\n{short}\n\n"
             "![forget quality against model utility](docs/figures/forget_quality_vs_utility.png)\n\n"
             "Forget quality is TOFU's KS p-value of the forget truth ratios against the oracle's (1: "
             "indistinguishable from a model that never saw the forget set); model utility is "
             + (f"`{utility}`, TOFU's 9-term harmonic mean with its truth ratios and option probs taken on the "
                "value's tokens (docs/metrics.md, \"Model utility on the value\"; TOFU's `model_utility` is in "
                "every table)" if utility == "model_utility_value" else "TOFU's 9-term harmonic mean")
             + ". The full tables are in [docs/results.md](docs/results.md).\n\n"
             "**Findings** (`results/<study>/findings.md`, written by the report from `paired_tests.csv` and "
             "`path_tests.csv`): each line is a regularizer against `none`, or a training path against the "
             "reference path `authors_world` (over all regularizers, or per regularizer, in brackets). The unit "
             "is a fine-tuned target: the methods that unlearn one target are averaged first, so a regularizer "
             "line has one pair per (path, seed) and a path line one per seed (the regularizer entries of a seed "
             "share their stages' seeds). Each line gives the mean of those differences on the tested scale with "
             "its 95% t-interval, the Holm-corrected p-value of the t-test and the number of pairs; the A/A "
             "control (`none` against itself with another data order) must come out not significant.\n\n"
             f"{findings_excerpt(findings) or '(no findings.md)'}\n\n"
             "**Can the instrument carry a finding?** Issue 13's targets, measured on this run:\n\n"
             f"{inst_table}\n" + END)
    if START in readme:
        readme = readme[:readme.index(START)] + block + readme[readme.index(END) + len(END):]
    else:
        readme = readme.replace("RESULTS_PLACEHOLDER", block)
    Path(args.readme).write_text(readme)

    figures = Path("docs/figures")
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copy(res / "forget_quality_vs_utility.png", figures / "forget_quality_vs_utility.png")

    models = summary[summary.model.isin(["target", "oracle", "unlearned"])].copy()
    models["method"] = models["method"].fillna(models["model"])
    models = models.sort_values(["regularizer", "model", "method"], kind="stable")
    pretrained = summary[summary.model == "pretrained"]
    text = [f"# Results of the default study ({date})", "",
            "Written by `python benchmarks/study_tables.py` from `results/benchmark/summary.csv` of "
            "`python benchmarks/study_walltime.py` (the default study, `config/config.yaml`, under the study name "
            "`benchmark`). Every row is one model; `method` is `target` or `oracle` for the fine-tuned models.", "",
            "## Every model", "", table(models, ["regularizer", "method"], COLUMNS), "",
            "## The pretrained model", "", table(pretrained.assign(regularizer="–", method="pretrained"),
                                                 ["method"], COLUMNS), "",
            "## The instrument (issue 13's targets)", "", inst_table, "",
            "## Findings", "", "\n".join("#" + line if line.startswith("## ") else line
                                  for line in findings.splitlines() if not line.startswith("# ")), ""]
    Path(args.out).write_text("\n".join(text))
    print(short)


if __name__ == "__main__":
    main()
