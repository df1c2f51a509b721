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


def test_the_smallest_lr_stable_and_reaching_early_on_every_path_is_chosen():
    table = runs([
        # 1e-4 reaches on path a only; 2e-4 on both; 4e-4 on both but unstable on b
        ("a", "npo", 1e-4, True, True, 0.10, 0.8), ("b", "npo", 1e-4, False, True, 0.40, 0.8),
        ("a", "npo", 2e-4, True, True, 0.05, 0.7), ("b", "npo", 2e-4, True, True, 0.12, 0.7),
        ("a", "npo", 4e-4, True, True, 0.01, 0.5), ("b", "npo", 4e-4, True, False, 0.02, 0.5),
    ])
    chosen = sweep.choose(table, paths=2)["npo"]
    assert chosen["lr"] == 2e-4 and chosen["reaches_oracle_on_every_path"] and chosen["paths_reached"] == 2
    assert chosen["mean_final_forget_prob"] == (0.05 + 0.12) / 2


def test_without_an_lr_reaching_everywhere_the_most_paths_then_the_lowest_final_prob_win():
    table = runs([
        ("a", "gd", 1e-4, True, True, 0.20, 0.8), ("b", "gd", 1e-4, False, True, 0.50, 0.8),
        ("a", "gd", 2e-4, True, True, 0.10, 0.7), ("b", "gd", 2e-4, False, True, 0.30, 0.7),
        ("a", "gd", 4e-4, False, True, 0.25, 0.6), ("b", "gd", 4e-4, False, True, 0.25, 0.6),
    ])
    chosen = sweep.choose(table, paths=2)["gd"]
    # 1e-4 and 2e-4 reach on one path; 2e-4 ends lower (mean 0.20 against 0.35)
    assert chosen["lr"] == 2e-4 and not chosen["reaches_oracle_on_every_path"] and chosen["paths_reached"] == 1
