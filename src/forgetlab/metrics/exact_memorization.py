"""Exact memorization (Tirumala et al. 2022, "Memorization Without Overfitting: Analyzing the
Training Dynamics of Large Language Models"; open-unlearning's ``exact_memorization``), on forget.

    EM(x) = (1/n) Σ_t 1[argmax_z p(z | x, y_<t) = y_t]    over the n tokens of " " + answer + eos,
                                                          teacher-forced
    exact_memorization = mean EM over forget rows

From answer_token_match of the one likelihood pass.
Hand-worked: matches (F, T, F, T, T) -> EM = 3/5; with (T, T) -> mean (0.6 + 1) / 2 = 0.8.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import METRICS, split_rows


@METRICS.register("exact_memorization")
def exact_memorization(samples, oracle=None) -> float:
    rows = split_rows(samples, "forget", "exact_memorization", ("answer_token_match",))
    return float(np.mean([np.mean(np.asarray(m, dtype=float)) for m in rows["answer_token_match"]]))
