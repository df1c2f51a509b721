"""The report recipe on a synthetic study (2 regularizers x 2 methods x 2 seeds, one split): every
table and figure is written, the numbers follow from the inputs, and all of it reaches MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgetlab import findings
from forgetlab.recipes import report
from forgetlab.stats import STATS_COLUMNS, TEST_COLUMNS, bootstrap_ci

REGS, METHODS, SEEDS, SPLIT = ("none", "dropout"), ("npo", "grad_ascent"), (0, 1), "forget10"
STEPS = [0, 2, 4, 5]
CHUNKS = 2  # a sequential npo run of CHUNKS steps per regularizer and seed


def utility(reg, method, seed):  # dropout is better by 0.05 + 0.01 * seed, per method
    return 0.4 + 0.1 * METHODS.index(method) + (0.05 + 0.01 * seed if reg == "dropout" else 0.0)


def write_model(root: Path, model: str, reg=None, method=None, seed=None, traj=True) -> list[Path]:
    """One evaluated model: its metrics.json and, for an unlearned one, the model dir with trajectory.csv."""
    name = method or model
    eval_dir = root / "eval" / (f"{reg}/seed{seed}" if reg else "pretrained") / SPLIT / (name if reg else "")
    model_dir = root / ("unlearn" if method else "finetune") / f"{reg}/seed{seed}/{SPLIT}/{name}/model"
    metrics = {"forget_quality": 1.0 if model == "oracle" else 10.0 ** -(3 + (seed or 0) + (reg == "none")),
               "model_utility": utility(reg, method, seed) if method else 0.5,
               "forget_prob": 0.2 if model == "oracle" else 0.1 + 0.01 * (seed or 0),
               "retain_prob": 0.6}
    if method:
        metrics.update(steps_to_threshold=4.0, threshold_reached=1.0)
    eval_dir.mkdir(parents=True, exist_ok=True)
    record = {"study": "t", "model": model, "regularizer": reg, "method": method, "split": SPLIT, "seed": seed,
              "regularizer_params": [{"name": reg}] if reg else None, "method_params": {"name": method} if method else None,
              "model_path": str(model_dir), "metrics": metrics}
    (eval_dir / "metrics.json").write_text(json.dumps(record))
    if not method:
        return [eval_dir / "metrics.json"]
    model_dir.mkdir(parents=True)
    if traj:  # forget_prob falls from 0.9 by a per-run amount, so each row can be traced back
        tag = REGS.index(reg) * 100 + METHODS.index(method) * 10 + seed
        pd.DataFrame({"step": STEPS, "forget_prob": [0.9 - 0.1 * i - tag / 1e4 for i in range(len(STEPS))],
                      "retain_prob": [0.6 - 0.01 * i for i in range(len(STEPS))],
                      "forget_truth_ratio": 0.5, "retain_truth_ratio": 0.4, "forget_paraphrased_prob": 0.3,
                      "forget_perturbed_prob": 0.2}).to_csv(model_dir / "trajectory.csv", index=False)
    return [eval_dir / "metrics.json", model_dir]


def step_utility(reg, seed, step):  # far from every other model's, so that a mix would show
    return 0.9 - 0.1 * step - 0.01 * seed - (0.05 if reg == "dropout" else 0.0)


def write_step(root: Path, reg: str, seed: int, step: int) -> Path:
    """The evaluation of step `step` of a sequential npo run (its model directory is not an input)."""
    eval_dir = root / "eval" / reg / f"seed{seed}" / SPLIT / "sequential" / "npo" / f"step{step}"
    eval_dir.mkdir(parents=True)
    record = {"study": "t", "model": "sequential", "regularizer": reg, "method": "npo", "split": SPLIT, "seed": seed,
              "sequential_step": step, "sequential_chunks": CHUNKS, "regularizer_params": [{"name": reg}],
              "method_params": {"name": "npo"}, "model_path": str(root / "unlearn" / f"step{step}"),
              "metrics": {"forget_quality": 0.5, "model_utility": step_utility(reg, seed, step), "forget_prob": 0.5 - 0.2 * step,
                          "retain_prob": 0.6}}
    (eval_dir / "metrics.json").write_text(json.dumps(record))
    return eval_dir / "metrics.json"


def write_study(root: Path) -> list[Path]:
    inputs = write_model(root, "pretrained")
    for reg in REGS:
        for seed in SEEDS:
            inputs += write_model(root, "target", reg, seed=seed) + write_model(root, "oracle", reg, seed=seed)
            for method in METHODS:
                inputs += write_model(root, "unlearned", reg, method, seed)
            inputs += [write_step(root, reg, seed, step) for step in range(1, CHUNKS + 1)]
    return inputs


def params():
    return {"study": "t", "stage": "report", "threads": 1, "metrics": ["forget_quality", "model_utility"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report run once on the synthetic study, its inputs given as Snakemake gives them:
    paths relative to the working directory."""
    work = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        report.run(params(), write_study(Path("results/t")), Path("results/t"))
    return work / "results" / "t", work / "mlflow.db"


def test_report_writes_every_table_and_figure(built):
    root, _ = built
    for name in report.OUTPUTS:
        assert (root / name).stat().st_size > (10_000 if name.endswith(".png") else 100), name
    assert not (root / ".report").exists()
    summary = pd.read_csv(root / "summary.csv")
    assert len(summary) == 1 + len(REGS) * len(SEEDS) * (2 + len(METHODS) + CHUNKS)

    stats = pd.read_csv(root / "stats.csv")
    assert list(stats.columns) == STATS_COLUMNS and not stats.isna().any().any()
    pd.testing.assert_frame_equal(stats, pd.read_parquet(root / "stats.parquet"), check_dtype=False)
    assert set(stats["method"]) == {*METHODS, "target", "oracle"} and set(stats["regularizer"]) == set(REGS)
    assert (stats["n_seeds"] == len(SEEDS)).all()
    cell = stats.set_index(["regularizer", "method", "metric"]).loc[("dropout", "grad_ascent", "model_utility")]
    seeds = [utility("dropout", "grad_ascent", s) for s in SEEDS]
    assert cell["mean"] == pytest.approx(np.mean(seeds))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(bootstrap_ci(seeds)[1:])
    # log10 forget quality per seed, then the mean: dropout seeds -3, -4
    log_fq = stats.set_index(["regularizer", "method", "metric"]).loc[("dropout", "npo", "log10_forget_quality")]
    assert log_fq["mean"] == pytest.approx(-3.5) and log_fq["ci_low"] == pytest.approx(-4) and log_fq["ci_high"] == pytest.approx(-3)
    # the fine-tuned models have no steps_to_threshold: no row rather than NaN
    assert not ((stats["method"] == "target") & (stats["metric"] == "steps_to_threshold")).any()


def test_paired_tests_of_the_synthetic_study(built):
    root, _ = built
    tests = pd.read_csv(root / "paired_tests.csv")
    assert list(tests.columns) == TEST_COLUMNS and not tests.isna().any().any()
    assert len(tests) == 2 and set(tests["metric"]) == {"forget_quality", "model_utility"}
    assert (tests["regularizer"] == "dropout").all() and (tests["baseline"] == "none").all()
    # pairs on (method, split, seed), 2 methods x 2 seeds; the unit is the seed (its methods unlearn one
    # target): 2 seed means, both in dropout's favour, t-tested
    assert (tests["n_pairs"] == 2).all() and (tests["n_model_pairs"] == 4).all() and (tests["unit"] == "split x seed").all()
    assert (tests["n_positive"] == 2).all() and tests["testable"].all()
    row = tests.set_index("metric")
    # utility: seed means 0.05 and 0.06, t = 0.055 / (sd / sqrt 2) = 11; with 1 df (Cauchy) p = 1 - 2 atan(t) / pi
    assert row.loc["model_utility", "statistic"] == pytest.approx(11.0)
    assert row.loc["model_utility", "p_value"] == pytest.approx(1 - 2 * np.arctan(11.0) / np.pi)
    assert row.loc["model_utility", "mean_diff"] == pytest.approx(0.055)
    # forget quality: exactly one decade better in both seeds (log10): no spread, the exact sign-flip
    # p = 2 / 2^2 (both signs positive: 2 of the 4 patterns count as extreme, two-sided)
    fq = row.loc["forget_quality"]
    assert fq["mean_diff"] == pytest.approx(1.0) and fq["p_value"] == pytest.approx(0.5) and "no spread" in fq["note"]
    p_mu = 1 - 2 * np.arctan(11.0) / np.pi
    order = ["model_utility", "forget_quality"]  # Holm: 2 * 0.058, then the running max with 0.5
    assert row.loc[order, "p_holm"].tolist() == pytest.approx([2 * p_mu, 0.5])
    assert not row["reject"].any()


def test_the_study_utility_takes_tofus_place_in_the_tests_and_findings():
    # config report.utility: model_utility_value. TOFU's utility is the same for both regularizers, the
    # value utility is `utility` (dropout better by 0.05 and 0.06 in the two seeds), its matched form 0.1 lower
    rows = [{"model": "unlearned", "regularizer": reg, "method": method, "split": SPLIT, "seed": seed, "collapsed": False,
             "forget_quality": 0.1, "model_utility": 0.3, "matched_model_utility_lik": 0.2,
             "model_utility_value": utility(reg, method, seed), "matched_model_utility_value_lik": utility(reg, method, seed) - 0.1}
            for reg in REGS for method in METHODS for seed in SEEDS]
    assert report.tested_metrics("model_utility_value") == {
        "forget_quality": "log10", "model_utility_value": "identity", "matched_forget_quality": "log10",
        "matched_model_utility_value_lik": "identity"}
    assert report.tested_metrics() == report.TESTED  # the default: TOFU's
    tests = report.paired(pd.DataFrame(rows), utility="model_utility_value")
    assert set(tests["metric"]) == {"forget_quality", "model_utility_value", "matched_model_utility_value_lik"}
    row = tests.set_index("metric")
    # seed means of the dropout - none differences: 0.05 and 0.06 -> 0.055, on both utility rows
    assert row.loc["model_utility_value", "mean_diff"] == pytest.approx(0.055)
    assert row.loc["matched_model_utility_value_lik", "mean_diff"] == pytest.approx(0.055)
    lines = [line for section in findings.sections(tests).values() for line in section]
    assert any(line.startswith("dropout vs none: model utility on the value after unlearning +0.055 [") for line in lines)
    assert not any("model utility after unlearning" in line for line in lines)


def test_trajectories_are_labelled_with_their_model(built):
    root, _ = built
    traj = pd.read_csv(root / "trajectories.csv")
    assert len(traj) == len(REGS) * len(METHODS) * len(SEEDS) * len(STEPS)
    last = traj[traj.step == STEPS[-1]].set_index(["regularizer", "method", "seed"])["forget_prob"]
    for reg in REGS:
        for method in METHODS:
            for seed in SEEDS:
                tag = REGS.index(reg) * 100 + METHODS.index(method) * 10 + seed
                assert last[(reg, method, seed)] == pytest.approx(0.6 - tag / 1e4)


def test_everything_goes_to_the_mlflow_report_run(built):
    _, db = built
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0]
    assert run.data.tags["stage"] == "report" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == set(report.OUTPUTS)
    assert run.data.metrics["test/dropout/model_utility/p_value"] == pytest.approx(1 - 2 * np.arctan(11.0) / np.pi)
    assert run.data.metrics["test/dropout/forget_quality/testable"] == 1.0


def test_missing_trajectories_give_placeholder_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = Path("results/t")
    inputs = write_model(root, "oracle", "none", seed=0) + write_model(root, "unlearned", "none", "npo", 0, traj=False)
    report.run(params(), inputs, root)
    assert len(pd.read_csv(root / "trajectories.csv")) == 0
    assert (root / "trajectory_forget_prob.png").stat().st_size > 1000
    tests = pd.read_csv(root / "paired_tests.csv")
    assert tests.empty and list(tests.columns) == TEST_COLUMNS  # no regularizer besides none


def test_a_trajectory_of_no_evaluated_model_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = Path("results/t")
    inputs = write_study(root)
    stray = root / "unlearn" / "stray" / "model"
    stray.mkdir(parents=True)
    pd.DataFrame({"step": [0], "forget_prob": [0.5], "retain_prob": [0.5], "forget_truth_ratio": [0.5],
                  "retain_truth_ratio": [0.5], "forget_paraphrased_prob": [0.5],
                  "forget_perturbed_prob": [0.5]}).to_csv(stray / "trajectory.csv", index=False)
    with pytest.raises(ValueError, match="no evaluated unlearned model"):
        report.run(params(), inputs + [stray], root)
    with pytest.raises(ValueError, match="expected a metrics.json"):
        report.split_inputs([root / "summary.txt"])


def test_sequential_steps_are_rows_of_their_own_and_out_of_the_statistics(built):
    root, _ = built
    summary = pd.read_parquet(root / "summary.parquet")
    steps = summary[summary["model"] == "sequential"]
    assert len(steps) == len(REGS) * len(SEEDS) * CHUNKS
    assert (steps["stage"] == "unlearn").all() and (steps["method"] == "npo").all()
    for (reg, seed), run in steps.groupby(["regularizer", "seed"]):
        assert run["sequential_step"].tolist() == list(range(1, CHUNKS + 1))  # in step order
        assert (run["sequential_chunks"] == CHUNKS).all()
        assert run["model_utility"].tolist() == pytest.approx([step_utility(reg, seed, j) for j in range(1, CHUNKS + 1)])
    others = summary[summary["model"] != "sequential"]
    assert others["sequential_step"].isna().all() and others["sequential_chunks"].isna().all()
    # the statistics and tests are those of the other models alone (see the tests above): no cell
    # of the stats holds a sequential step's utility
    stats = pd.read_csv(root / "stats.csv")
    npo_utility = stats[(stats["method"] == "npo") & (stats["metric"] == "model_utility")]
    assert npo_utility["mean"].max() < 0.5
    assert (root / "sequential_unlearning.png").stat().st_size > 10_000


def test_the_sequential_figure_starts_from_the_target(built):
    from forgetlab import plots

    root, _ = built
    table = plots.sequential_steps(pd.read_parquet(root / "summary.parquet"), ["model_utility", "forget_prob"])
    assert len(table) == len(REGS) * (CHUNKS + 1)
    line = table[table["regularizer"] == "none"].set_index("step")
    assert line.loc[0, "model_utility"] == pytest.approx(0.5)  # the targets' utility (write_model)
    assert line.loc[1, "model_utility"] == pytest.approx(np.mean([step_utility("none", s, 1) for s in SEEDS]))
    assert line.loc[CHUNKS, "forget_prob"] == pytest.approx(0.5 - 0.2 * CHUNKS)


def test_a_study_without_sequential_runs_gets_a_placeholder_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = Path("results/t")
    inputs = write_model(root, "oracle", "none", seed=0) + write_model(root, "unlearned", "none", "npo", 0)
    report.run(params(), inputs, root)
    assert (root / "sequential_unlearning.png").stat().st_size > 1000
    assert pd.read_csv(root / "summary.csv")["sequential_step"].isna().all()
