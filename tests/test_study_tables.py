"""benchmarks/study_tables.py's instrument table (issue 13's targets, copied into the README): the
utility criterion is the study's utility (config report.utility), TOFU's printed beside it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("study_tables", REPO / "benchmarks" / "study_tables.py")
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)


def summary() -> pd.DataFrame:
    """One target per path and four unlearned models of it: utility on the value follows retain prob
    exactly, TOFU's utility runs against it on path a and with it on path b."""
    rows = []
    for path, tofu in (("a", [0.4, 0.3, 0.2, 0.1]), ("b", [0.1, 0.2, 0.3, 0.4])):
        rows.append({"model": "target", "regularizer": "none", "path": path, "split": "forget10", "seed": 0,
                     "retain_prob": 0.9, "model_utility_value": 0.6, "model_utility": 0.3})
        for k, retain in enumerate([0.2, 0.4, 0.6, 0.8]):
            rows.append({"model": "unlearned", "regularizer": "none", "path": path, "split": "forget10", "seed": 0,
                         "method": f"m{k}", "retain_prob": retain, "model_utility_value": 0.1 + retain / 2,
                         "model_utility": tofu[k], "model_utility_value_lik": retain, "model_utility_lik": 1 - retain})
    return pd.DataFrame(rows)


def measured(table: pd.DataFrame, start: str) -> float:
    rows = table[table.figure.str.startswith(start)]
    assert len(rows) == 1, start
    return float(rows.measured.iloc[0])


def test_the_criterion_is_the_study_utility_and_tofus_is_beside_it():
    table = tables.instrument(summary(), None, None, "model_utility_value")
    criterion = "Spearman rank correlation of model utility (the study's, `model_utility_value`)"
    assert measured(table, criterion) == 1.0  # the value utility rises with retain prob on both paths
    assert table.loc[table.figure.str.startswith(criterion), "target"].item() == ">= 0.8"
    assert measured(table, "the same within each training path (the smallest; ") == 1.0
    # TOFU's: ranks 4 3 2 1 and 1 2 3 4 against retain's 1 2 3 4 twice; pooled, Spearman of the 8 models
    tofu = [0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.4]
    retain = [0.2, 0.4, 0.6, 0.8] * 2
    expected = pd.Series(tofu).rank().corr(pd.Series(retain).rank())
    assert measured(table, "the same with TOFU's `model_utility`") == pytest.approx(expected)
    assert measured(table, "the same within each training path (the smallest)") == -1.0  # path a
    # the matched comparison's utility is the study utility's likelihood form: monotone in it
    assert measured(table, "Spearman of the matched comparison's utility") == 1.0


def test_tofu_utility_by_default():
    table = tables.instrument(summary(), None, None)
    assert measured(table, "Spearman rank correlation of model utility (the study's, `model_utility`)") == pytest.approx(
        pd.Series([0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.4]).rank().corr(pd.Series([0.2, 0.4, 0.6, 0.8] * 2).rank()))
    assert np.isnan(measured(table, "the same with TOFU's `model_utility`"))  # no second utility to set beside it
    # model_utility_lik (1 - retain) against TOFU's: concordant on path a, discordant on path b -> 0
    lik = [0.8, 0.6, 0.4, 0.2] * 2
    tofu = [0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.4]
    assert pd.Series(lik).rank().corr(pd.Series(tofu).rank()) == pytest.approx(0.0)
    assert measured(table, "Spearman of the matched comparison's utility") == pytest.approx(0.0)
