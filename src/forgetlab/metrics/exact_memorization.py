"""Exact memorization (Tirumala et al. 2022, "Memorization Without Overfitting: Analyzing the
Training Dynamics of Large Language Models"; open-unlearning's ``exact_memorization``), on forget.

    EM(x) = (1/n) Σ_t 1[argmax_z p(z | x, y_<t) = y_t]    over the n tokens of " " + answer,
                                                          teacher-forced, eos excluded
    exact_memorization = mean EM over forget rows

From answer_token_match of the one likelihood pass, without its last entry (the eos), as
open-unlearning's ``tokenwise_vocab_logprobs`` drops the last labelled token.
``exact_memorization_of(match, eos=True)`` keeps it.
Hand-worked: matches (F, T, F, T, T) and an eos F -> EM = 3/5; with (T, T) and an eos F -> mean
(0.6 + 1) / 2 = 0.8.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import METRICS, answer_tokens, split_rows, uses


def exact_memorization_of(match, eos: bool = False) -> float:
    return float(np.mean(answer_tokens(match, "exact_memorization", eos).astype(float)))


@METRICS.register("exact_memorization")
@uses(columns=("answer_token_match",))
def exact_memorization(samples, oracle=None, role="model") -> float:
    rows = split_rows(samples, "forget", "exact_memorization", ("answer_token_match",))
    return float(np.mean([exact_memorization_of(m) for m in rows["answer_token_match"]]))
