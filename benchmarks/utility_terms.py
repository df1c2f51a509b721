"""Which of model utility's nine terms follow the damage an unlearning run does, on a finished study.

Issue 13 asks that, over the unlearned models, model utility rank-correlates with retain probability
(Spearman >= 0.8). TOFU's model utility is the harmonic mean of nine terms (forgetlab.metrics.
model_utility), so the smallest terms weigh the most: a term that sits low and does not move with
the damage flattens utility. This script reads every evaluated model of results/<study>/eval/ (its
samples.parquet, where every term's per-row values are kept) and prints:

- per term: its mean on the targets, on each method's unlearned models and on the oracles; its
  Spearman with retain prob over the unlearned models; and its share of utility's denominator
  (1/term over the sum of 1/term_i, on the unlearned models): what decides the harmonic mean;
- model utility's Spearman with retain prob, and with each term left out in turn;
- the targets' terms per regularizer entry: where a regularizer's own offset in utility comes from;
- two counterfactuals, never used by the study, each a change to the synthetic world's real_authors
  and world_facts rows that would bring them closer to TOFU's, whose answers there are the bare
  value (a name, a city) and whose perturbed answers share the answer's form:
  - `value_rouge`: their ROUGE terms scored on the answer's value (ROUGE-L recall of
    data/<study>/qa/<split>.jsonl's `cloze_answer` in the model's greedy answer, `generated`)
    instead of on the answer sentence, whose template a greedy answer with a wrong value repeats;
  - `answer_template` (with --rescore: every model is loaded and scored again on those two splits,
    a likelihood pass): their option prob and truth ratio with the perturbed answers rendered in
    the answer's own template (the answer with its value swapped for each wrong one) instead of
    the paraphrase's, so that a template preference does not enter;

and the same tables for forgetlab's `model_utility_para` and `model_utility_value` (the latter's
truth-ratio and option-prob terms on the value's tokens alone: forgetlab.metrics.model_utility_value),
from the scoring columns the study kept.

It writes the figures to benchmarks/results/utility_terms.json.

    python benchmarks/utility_terms.py [--study benchmark] [--rescore]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from forgetlab.eval.scoring import rouge_l_recall
from forgetlab.metrics.truth_ratio import utility_score
from forgetlab.metrics.model_utility import UTILITY_TERMS, UTILITY_TERMS_PARA, harmonic_mean, utility_terms
from forgetlab.metrics.model_utility_value import UTILITY_TERMS_VALUE

NAMES = [f"{split}:{column}" for split, column in UTILITY_TERMS]
PARA_NAMES = [f"{split}:{column}" for split, column in UTILITY_TERMS_PARA]
VALUE_NAMES = [f"{split}:{column}" for split, column in UTILITY_TERMS_VALUE]


VALUE_ROUGE = ("real_authors", "world_facts")


def answer_values(data: Path) -> dict[tuple[str, str], str]:
    """(split, row id) -> the row's value (`cloze_answer`) on real_authors and world_facts."""
    values = {}
    for split in VALUE_ROUGE:
        for line in (data / "qa" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            values[(split, row["id"])] = row["cloze_answer"]
    return values


def value_rouge_terms(samples: pd.DataFrame, values: dict) -> dict[str, float]:
    """The real_authors and world_facts ROUGE terms on the answer's value (see the module's text),
    under the keys `<split>:rouge_value`."""
    out = {}
    for split in VALUE_ROUGE:
        s = samples[samples.split == split]
        out[f"{split}:rouge_value"] = float(np.mean([rouge_l_recall(g or "", values[(split, k)])
                                                     for g, k in zip(s["generated"], s["id"])]))
    return out


def models(res: Path, values: dict) -> pd.DataFrame:
    """One row per evaluated model (not the pretrained one): its grid coordinates, its terms of
    every utility form and its value ROUGE terms (`values`: answer_values), each table read once."""
    rows = []
    for metrics in sorted((res / "eval").rglob("metrics.json")):
        head = json.loads(metrics.read_text())
        if head.get("model") in (None, "pretrained") or "sequential" in metrics.parts:
            continue
        samples = pd.read_parquet(metrics.parent / "samples.parquet")
        rows.append({"model_path": head["model_path"], "model": head["model"], "method": head.get("method"),
                     "regularizer": head.get("regularizer"), "path": head.get("path"), "seed": head.get("seed"),
                     **dict(zip(NAMES, utility_terms(samples))),
                     **dict(zip(PARA_NAMES, utility_terms(samples, UTILITY_TERMS_PARA))),
                     **(dict(zip(VALUE_NAMES, utility_terms(samples, UTILITY_TERMS_VALUE)))
                        if "truth_ratio_value" in samples else {}),
                     **value_rouge_terms(samples, values)})
    return pd.DataFrame(rows)


def value_rouge(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its real_authors and world_facts ROUGE terms on the answer's value."""
    return frame.assign(**{f"{split}:rouge_l_recall": frame[f"{split}:rouge_value"] for split in VALUE_ROUGE})


def answer_template(frame: pd.DataFrame, res: Path, data: Path) -> pd.DataFrame:
    """The real_authors and world_facts option prob and truth ratio with each perturbed answer in the
    answer's template (see the module's text): every model scored again on those two splits."""
    from forgetlab.eval.scoring import score_split
    from forgetlab.model import load_model, load_tokenizer

    def swapped(row: dict) -> dict:
        value = row["cloze_answer"]
        wrong = [o for o in row["mc_options"] if o != value]
        return {**row, "perturbed_answer": [row["answer"].replace(value, w, 1) for w in wrong]}

    qa = {split: [swapped(json.loads(line)) for line in (data / "qa" / f"{split}.jsonl").read_text().splitlines()]
          for split in ("real_authors", "world_facts")}
    tokenizer, out = load_tokenizer(res / "pretrain" / "model"), frame.copy()
    for i, r in frame.iterrows():
        model = load_model(r["model_path"])
        for split, rows in qa.items():
            scored = score_split(model, tokenizer, rows, split, 64, generate=False)
            out.loc[i, f"{split}:option_prob"] = float(scored.option_prob.mean())
            out.loc[i, f"{split}:truth_ratio"] = utility_score(scored, split, "truth_ratio")
    return out


def utility(frame: pd.DataFrame, names=NAMES) -> pd.Series:
    return frame[list(names)].apply(lambda r: harmonic_mean(list(r)), axis=1)


def rho(a, b) -> float:
    """Spearman's rank correlation, rounded; NaN where either side is constant (no ranks to compare)."""
    if pd.Series(a).nunique() < 2 or pd.Series(b).nunique() < 2:
        return float("nan")
    return round(float(spearmanr(a, b).statistic), 3)


def report(frame: pd.DataFrame, names=NAMES) -> dict:
    """The per-term table and utility's rank correlations over the unlearned models of `frame`."""
    un = frame[frame.model == "unlearned"]
    retain = un["retain:prob"]
    inverse = 1 / un[names].clip(lower=1e-12)
    terms = {}
    for name in names:
        terms[name] = {"target": round(float(frame.loc[frame.model == "target", name].mean()), 3),
                       "oracle": round(float(frame.loc[frame.model == "oracle", name].mean()), 3),
                       **{f"unlearned {m}": round(float(g[name].mean()), 3) for m, g in un.groupby("method")},
                       "spearman_with_retain_prob": rho(un[name], retain),
                       "share_of_denominator": round(float((inverse[name] / inverse.sum(axis=1)).mean()), 3)}
    return {"models": len(frame), "unlearned": len(un), "terms": terms,
            "model_utility_spearman": rho(utility(un, names), retain),
            "without_each_term": {n: rho(utility(un, [m for m in names if m != n]), retain) for n in names}}


def show(title: str, figures: dict) -> None:
    print(f"\n## {title}: model utility's Spearman with retain prob over {figures['unlearned']} unlearned models: "
          f"{figures['model_utility_spearman']}")
    table = pd.DataFrame(figures["terms"]).T
    table["utility Spearman without it"] = pd.Series(figures["without_each_term"])
    print(table.to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="benchmark")
    ap.add_argument("--rescore", action="store_true", help="also the answer_template counterfactual (loads every model)")
    args = ap.parse_args()
    res, data = Path("results") / args.study, Path("data") / args.study
    frame = models(res, answer_values(data))
    if not (frame.model == "unlearned").any():
        raise SystemExit(f"no evaluated unlearned model under {res / 'eval'}: run the study first")
    figures = {"tofu": report(frame), "para": report(frame, PARA_NAMES)}
    if set(VALUE_NAMES) <= set(frame):  # a study evaluated before the value columns existed has none
        figures["value"] = report(frame, VALUE_NAMES)
    figures["value_rouge"] = report(value_rouge(frame))
    if args.rescore:
        figures["answer_template"] = report(answer_template(frame, res, data))
    titles = {"tofu": "TOFU's model utility (the study's)",
              "para": "model_utility_para (ra/wf option prob and truth ratio with the paraphrase as the correct answer)",
              "value_rouge": "counterfactual: ra/wf ROUGE on the answer's value",
              "answer_template": "counterfactual: ra/wf perturbed answers in the answer's template",
              "value": "model_utility_value (truth ratios and ra/wf option probs on the value's tokens alone)"}
    for key, figs in figures.items():
        show(titles[key], figs)
    targets = frame[frame.model == "target"].groupby("regularizer")[NAMES].mean().round(3)
    print("\n## the targets' terms per regularizer entry\n" + targets.T.to_string())
    out = Path(__file__).parent / "results" / "utility_terms.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "study": args.study, **figures,
                               "targets_by_regularizer": targets.T.to_dict()}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
