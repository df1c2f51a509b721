"""benchmarks/unlearn_lr_sweep.py's choice of a method's learning rate over every training path,
on hand-made run tables (the sweep's runs themselves are the study's jobs)."""

from __future__ import annotations

import importlib.util

import pandas as pd

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("unlearn_lr_sweep", REPO / "benchmarks" / "unlearn_lr_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def runs(rows):
    return pd.DataFrame([dict(zip(("path", "method", "lr", "reached_early", "stable", "final_forget_prob",
                                   "final_retain_prob"), r)) for r in rows])


def test_of_the_lrs_stable_and_reaching_early_on_every_path_the_one_keeping_most_retain_prob_is_chosen():
    table = runs([
        # 1e-4 reaches on path a only; 2e-4 and 4e-4 on both, 4e-4 keeping more retain prob (mean 0.75
        # against 0.70, as NPO does at a larger rate); 8e-4 keeps the most but is unstable on b
        ("a", "npo", 1e-4, True, True, 0.10, 0.9), ("b", "npo", 1e-4, False, True, 0.40, 0.9),
        ("a", "npo", 2e-4, True, True, 0.05, 0.7), ("b", "npo", 2e-4, True, True, 0.12, 0.7),
        ("a", "npo", 4e-4, True, True, 0.03, 0.8), ("b", "npo", 4e-4, True, True, 0.05, 0.7),
        ("a", "npo", 8e-4, True, True, 0.01, 0.95), ("b", "npo", 8e-4, True, False, 0.02, 0.95),
    ])
    chosen = sweep.choose(table, paths=2)["npo"]
    assert chosen["lr"] == 4e-4 and chosen["reaches_oracle_on_every_path"] and chosen["paths_reached"] == 2
    assert chosen["mean_final_forget_prob"] == (0.03 + 0.05) / 2
    assert chosen["mean_final_retain_prob"] == (0.8 + 0.7) / 2


def test_a_tie_in_retain_prob_goes_to_the_smaller_lr():
    table = runs([("a", "gd", lr, True, True, 0.05, 0.6) for lr in (4e-4, 2e-4)])
    assert sweep.choose(table, paths=1)["gd"]["lr"] == 2e-4


def test_a_run_reaching_the_oracle_by_three_quarters_of_its_steps_reaches_early():
    assert sweep.reached_early(18, 24) and not sweep.reached_early(19, 24) and not sweep.reached_early(None, 24)


def test_recorded_runs_are_judged_again_by_the_rule(tmp_path):
    # grad_diff at 1e-3 reaches path a at step 18 of 24 (early by 3/4), keeping retain prob 0.45;
    # at 2e-3 at step 10, keeping 0.20: the recorded reached_early flags (2/3) are recomputed
    run = dict(max_rise=0.0, stable=True, final_forget_prob=0.1, reached_early=False)
    recorded = {"paths": ["a"], "last_step": 24, "runs": [
        {**run, "path": "a", "method": "grad_diff", "lr": 1e-3, "reached_at": 18, "final_retain_prob": 0.45},
        {**run, "path": "a", "method": "grad_diff", "lr": 2e-3, "reached_at": 10, "final_retain_prob": 0.20}]}
    f = tmp_path / "sweep.json"
    f.write_text(sweep.json.dumps(recorded))
    out = sweep.rechoose(f)
    assert [r["reached_early"] for r in out["runs"]] == [True, True]
    assert out["chosen"]["grad_diff"]["lr"] == 1e-3 and out["rule"] == sweep.RULE


def test_without_an_lr_reaching_everywhere_the_most_paths_then_the_lowest_final_prob_win():
    table = runs([
        ("a", "gd", 1e-4, True, True, 0.20, 0.8), ("b", "gd", 1e-4, False, True, 0.50, 0.8),
        ("a", "gd", 2e-4, True, True, 0.10, 0.7), ("b", "gd", 2e-4, False, True, 0.30, 0.7),
        ("a", "gd", 4e-4, False, True, 0.25, 0.6), ("b", "gd", 4e-4, False, True, 0.25, 0.6),
    ])
    chosen = sweep.choose(table, paths=2)["gd"]
    # 1e-4 and 2e-4 reach on one path; 2e-4 ends lower (mean 0.20 against 0.35)
    assert chosen["lr"] == 2e-4 and not chosen["reaches_oracle_on_every_path"] and chosen["paths_reached"] == 1
