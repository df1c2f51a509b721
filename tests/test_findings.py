"""findings.md, written by the report from its tables: on a synthetic study of 3 seeds (none,
dropout, an A/A copy of none; 3 methods; one split), every number of every sentence is its row of
paired_tests.csv to the printed precision, significant findings come first, the A/A control's
line is always there and a failed control is said in red; a collapsed model is flagged and its
pairs leave the forget-quality test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from forgetlab import findings
from forgetlab.recipes import report

REGS, METHODS, SEEDS, SPLIT = ("none", "dropout", "none_aa"), ("npo", "grad_ascent", "grad_diff"), (0, 1, 2), "forget10"
COLLAPSED_RUN = ("dropout", "grad_diff", 2)  # forget and retain prob below its oracle's forget prob (0.2)
DAMAGED_RUN = ("dropout", "grad_diff", 1)  # retain prob below the oracle's retain prob but not its forget prob


def metrics_of(model, reg, method, seed, aa_shift):
    if model != "unlearned":  # the oracle: forget_prob 0.2, retain_prob 0.6
        return {"forget_quality": 1.0, "model_utility": 0.5, "forget_prob": 0.2, "retain_prob": 0.6}
    m, k = METHODS.index(method), 3 * seed + METHODS.index(method)  # k = 0..8, one per pair
    better = reg == "dropout"
    jitter = aa_shift * (-1) ** k * (k + 1) if reg == "none_aa" else 0.0
    out = {"forget_quality": 10.0 ** -(4 + m + seed - (1.0 + 0.1 * k if better else 0.0) + jitter),
           "model_utility": 0.4 + 0.01 * m + (0.02 + 0.001 * k if better else 0.0) + jitter / 10,
           "forget_prob": 0.1, "retain_prob": {COLLAPSED_RUN: 0.15, DAMAGED_RUN: 0.5}.get((reg, method, seed), 0.7),
           "matched_forget_quality": 10.0 ** -(2 + seed + (0.1 * k if better else 0.0)),
           "matched_model_utility_lik": 0.3 + 0.01 * seed + (0.001 * (-1) ** k if better else 0.0)}
    return out


def write_study(root: Path, regs=REGS, aa_shift=0.01) -> list[Path]:
    inputs = []
    for reg in regs:
        for seed in SEEDS:
            for model, method in [("oracle", None)] + [("unlearned", m) for m in METHODS]:
                name = method or model
                eval_dir = root / "eval" / reg / f"seed{seed}" / SPLIT / name
                eval_dir.mkdir(parents=True)
                record = {"study": "syn", "model": model, "regularizer": reg, "method": method, "split": SPLIT,
                          "seed": seed, "regularizer_params": [{"name": "none" if reg != "dropout" else reg}],
                          "method_params": {"name": method} if method else None,
                          "model_path": str(root / "m" / reg / str(seed) / name),
                          "metrics": metrics_of(model, reg, method, seed, aa_shift)}
                (eval_dir / "metrics.json").write_text(json.dumps(record))
                inputs.append(eval_dir / "metrics.json")
    return inputs


def build(tmp_path, monkeypatch, **kw) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = Path("results/syn")
    inputs = write_study(root, **kw)
    aa = ["none_aa"] if "none_aa" in kw.get("regs", REGS) else []
    params = {"study": "syn", "stage": "report", "threads": 1, "metrics": ["forget_quality"],
              **({"aa_controls": aa} if aa else {})}
    report.run(params, inputs, root)
    return tmp_path / root


SENTENCE = re.compile(r"^- (?P<level>\S+) vs (?P<baseline>\S+)(?: \((?P<scope>[^)]+)\))?: (?P<label>.+?) (?P<mean_diff>[+-]\S+) "
                      r"\[(?P<diff_ci_low>\S+), (?P<diff_ci_high>\S+)\], Holm p = (?P<p_holm>\S+), "
                      r"n = (?P<n_pairs>\d+) pairs(?: of (?P<unit>.+?) means \((?P<n_model_pairs>\d+) model pairs\))?"
                      r"(?: \((?P<n_excluded>\d+) pair\(s\) with a collapsed model "
                      r"left out\))?(?P<untestable> \(not testable\))?$")


def parse(text: str) -> tuple[list[dict], list[str]]:
    """(the sentences' fields, the other lines)."""
    sentences, rest = [], []
    for line in text.splitlines():
        match = SENTENCE.match(line)
        (sentences.append(match.groupdict()) if match else rest.append(line))
    return sentences, rest


def test_every_number_of_findings_is_its_row_of_paired_tests(tmp_path, monkeypatch):
    root = build(tmp_path, monkeypatch)
    tests = pd.read_csv(root / "paired_tests.csv")
    sentences, rest = parse((root / "findings.md").read_text())
    label_of = {label: metric for metric, label in findings.LABELS.items()}
    assert len(sentences) == len(tests) == 2 * 4  # dropout and none_aa x the four headline metrics
    seen = set()
    for s in sentences:
        row = tests[(tests["regularizer"] == s["level"]) & (tests["metric"] == label_of[s["label"]])]
        assert len(row) == 1, s
        row = row.iloc[0]
        seen.add((row["regularizer"], row["metric"]))
        assert s["baseline"] == row["baseline"] == "none"
        for key in ("mean_diff", "diff_ci_low", "diff_ci_high", "p_holm"):  # 3 significant digits
            assert float(s[key]) == pytest.approx(row[key], rel=5e-3, abs=1e-300), (s, key)
        assert int(s["n_pairs"]) == row["n_pairs"]
        assert (s["unit"], int(s["n_model_pairs"])) == (row["unit"], row["n_model_pairs"]) == ("split x seed", row["n_model_pairs"])
        assert int(s["n_excluded"] or 0) == row["n_excluded"]
        assert bool(s["untestable"]) == (not row["testable"])
    assert len(seen) == len(tests)
    # no other number anywhere but the level of the test (0.05) and the CI's 95%
    numbers = {n for line in rest if not line.startswith("# Findings") for n in re.findall(r"\d+(?:\.\d+)?", line)}
    assert numbers <= {"0.05", "95"}


def test_the_synthetic_study_says_what_its_tables_say(tmp_path, monkeypatch):
    root = build(tmp_path, monkeypatch)
    tests = pd.read_csv(root / "paired_tests.csv").set_index(["regularizer", "metric"])
    # the unit is the seed (its 3 methods unlearn one target): dropout's utility differences 0.02 + 0.001 k
    # (k = 3 seed + method) average to 0.021, 0.024, 0.027 per seed; the t-test of those 3 means:
    # t = 0.024 / (0.003 / sqrt 3), and with 2 df the two-sided p is 1 - t / sqrt(2 + t^2)
    utility = tests.loc[("dropout", "model_utility")]
    t = 0.024 / (0.003 / 3 ** 0.5)
    assert (utility["n_pairs"], utility["n_model_pairs"]) == (3, 9)
    assert utility["statistic"] == pytest.approx(t) and utility["p_value"] == pytest.approx(1 - t / (2 + t * t) ** 0.5)
    # forget quality: decades 1 + 0.1 k, the collapsed run's pair (k = 8) left out: seed means 1.1, 1.4
    # and (1.6 + 1.7) / 2 = 1.65; the effect is the mean of the unit means
    fq = tests.loc[("dropout", "forget_quality")]
    assert (fq["n_pairs"], fq["n_model_pairs"], fq["n_excluded"]) == (3, 8, 1)
    assert fq["mean_diff"] == pytest.approx((1.1 + 1.4 + 1.65) / 3)
    assert (tests.xs("none_aa")["family"] == "aa_control").all() and not tests.xs("none_aa")["reject"].any()
    summary = pd.read_csv(root / "summary.csv")
    flagged = summary[summary["collapsed"] == 1][["regularizer", "method", "seed"]]
    assert [tuple(r) for r in flagged.itertuples(index=False)] == [COLLAPSED_RUN]
    assert summary.loc[summary["model"] == "oracle", "collapsed"].isna().all()

    text = (root / "findings.md").read_text()
    lines = text.splitlines()
    significant = [i for i, line in enumerate(lines) if line.startswith("- dropout") and "utility after" in line]
    not_significant = lines.index("## Not significant")
    assert significant and max(significant) < not_significant  # significant findings first
    assert "- dropout vs none: log10 forget quality after unlearning +1.38 [" in text
    assert "(1 pair(s) with a collapsed model left out)" in text
    aa = lines[lines.index("## A/A control"):]
    assert any(line.startswith("- none_aa vs none: model utility after unlearning") for line in aa)
    assert findings.FAILED not in text and "A/A control FAILED" not in (root / "findings.html").read_text()


def test_a_failed_aa_control_is_said_in_red(tmp_path, monkeypatch):
    root = build(tmp_path, monkeypatch, aa_shift=0.0)  # none_aa == none: then make it differ
    tests = pd.read_csv(root / "paired_tests.csv")
    assert not tests[tests["family"] == "aa_control"]["testable"].any()  # identical copies: nothing to test
    # a copy whose utility is always higher: p = 2/512, significant after Holm
    tests.loc[(tests["regularizer"] == "none_aa") & (tests["metric"] == "model_utility"),
              ["testable", "p_value", "p_holm"]] = [True, 2 / 512, 4 * 2 / 512]
    lines = findings.sections(tests)
    assert lines["A/A control"][0].startswith(findings.FAILED)
    md, page = findings.markdown("syn", lines), findings.to_html("syn", lines)
    assert '<span style="color: red">**A/A control FAILED**' in md
    assert '<span style="color: red"><b>A/A control FAILED</b>' in page


def test_a_study_without_an_aa_entry_says_the_control_was_not_run(tmp_path, monkeypatch):
    root = build(tmp_path, monkeypatch, regs=("none", "dropout"))
    text = (root / "findings.md").read_text()
    assert findings.NOT_RUN in text.splitlines()[text.splitlines().index("## A/A control") + 2]


def write_path_study(root: Path) -> list[Path]:
    """Two training paths a and b of the synthetic study; on path b every unlearned model needs
    more steps to reach its oracle (by 1 + k + 9 r: k = 0..8 its pair's index within regularizer r =
    0..2, so that the 27 differences are distinct) and recovers more."""
    inputs = []
    for reg in REGS:
        for seed in SEEDS:
            for path in ("a", "b"):
                for model, method in [("oracle", None)] + [("unlearned", m) for m in METHODS]:
                    eval_dir = root / "eval" / reg / f"seed{seed}" / path / SPLIT / (method or model)
                    eval_dir.mkdir(parents=True)
                    metrics = metrics_of(model, reg, method, seed, 0.01)
                    if model == "unlearned":
                        k = 3 * seed + METHODS.index(method)
                        metrics["steps_to_threshold"] = 10.0 + (1 + k + 9 * REGS.index(reg) if path == "b" else 0)
                        metrics["relearn_recovery"] = 0.2 + (0.05 * (1 + k) if path == "b" else 0.0)
                    record = {"study": "syn", "model": model, "regularizer": reg, "method": method, "split": SPLIT,
                              "seed": seed, "path": path, "regularizer_params": [{"name": "none"}],
                              "method_params": {"name": method} if method else None,
                              "model_path": str(root / "m" / reg / str(seed) / path / (method or model)),
                              "metrics": metrics}
                    (eval_dir / "metrics.json").write_text(json.dumps(record))
                    pd.DataFrame({"split": "forget", "id": range(4), "truth_ratio": [0.5, 0.6, 0.7, 0.8]}).to_parquet(
                        eval_dir / "samples.parquet")
                    inputs.append(eval_dir / "metrics.json")
    return inputs


def test_every_number_of_the_path_findings_is_its_row_of_path_tests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = Path("results/syn")
    inputs = write_path_study(root)
    params = {"study": "syn", "stage": "report", "threads": 1, "metrics": ["forget_quality"],
              "aa_controls": ["none_aa"], "paths": {"a": ["authors"], "b": ["world", "authors"]}}
    report.run(params, inputs, root)
    paths = pd.read_csv(root / "path_tests.csv")
    sentences, _ = parse((root / "findings.md").read_text())
    label_of = {label: metric for metric, label in findings.LABELS.items()}
    path_sentences = [s for s in sentences if s["scope"]]
    known = paths[paths["metric"].isin(findings.LABELS)]
    assert len(path_sentences) == len(known) == 4 * 4  # (all + 3 regularizers) x 4 metrics
    for s in path_sentences:
        reg = "all" if s["scope"] == "all regularizers" else s["scope"]
        row = paths[(paths["regularizer"] == reg) & (paths["metric"] == label_of[s["label"]])]
        assert len(row) == 1, s
        row = row.iloc[0]
        assert (s["level"], s["baseline"]) == (row["path"], row["reference_path"]) == ("b", "a")
        for key in ("mean_diff", "diff_ci_low", "diff_ci_high", "p_holm"):
            assert float(s[key]) == pytest.approx(row[key], rel=5e-3, abs=1e-300), (s, key)
        assert (int(s["n_pairs"]), int(s["n_model_pairs"])) == (row["n_pairs"], row["n_model_pairs"])
    # pooled over the 3 regularizers, the unit is the seed: the steps differences 1 + k + 9 r average, over
    # the 3 methods (k = 3 seed + 0..2) and the 3 regularizers (r = 0..2), to 11 + 3 seed = 11, 14, 17:
    # mean 14, sd 3, t = 14 / (3 / sqrt 3), and with 2 df p = 1 - t / sqrt(2 + t^2) (0.015): a finding
    steps = paths[(paths["regularizer"] == "all") & (paths["metric"] == "steps_to_threshold")].iloc[0]
    t = 14 / (3 / 3 ** 0.5)
    assert (steps["n_pairs"], steps["n_model_pairs"]) == (3, 27) and steps["reject"]
    assert steps["p_value"] == pytest.approx(1 - t / (2 + t * t) ** 0.5) and steps["mean_diff"] == pytest.approx(14.0)
    text = (root / "findings.md").read_text()
    lines = text.splitlines()
    line = next(i for i, t in enumerate(lines) if t.startswith("- b vs a (all regularizers): steps to the oracle's"))
    assert line < lines.index("## Not significant")  # among the significant findings
