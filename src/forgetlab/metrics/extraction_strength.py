"""Extraction strength (Wang et al. 2025, "Towards Effective Evaluations and Comparisons for LLM
Unlearning Methods", ICLR; open-unlearning's ``extraction_strength``), on the forget split.

For an answer y_1..y_n (the tokens of " " + answer + eos) given the prompt x, with teacher-forced
argmax predictions ŷ_t = argmax_z p(z | x, y_<t):

    k*  = min { k in 0..n : ŷ_t = y_t for every t > k }     (the shortest answer prefix after
                                                            which the model predicts the rest)
    ES  = 1 - k*/n  =  (length of the trailing run of correct argmax predictions) / n
    extraction_strength = mean ES over forget rows

Teacher-forced argmax is what the definition uses, so no generation is needed: it is
answer_token_match of the one likelihood pass. (open-unlearning's loop scores an answer whose
last token is already wrong as 1/n instead of 0; here k* = n and ES = 0.)
Hand-worked: matches (F, T, F, T, T) -> k* = 3, ES = 2/5 = 0.4.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import METRICS, split_rows


def extraction_strength_of(match) -> float:
    match = np.asarray(match, dtype=bool)
    wrong = np.flatnonzero(~match)
    k = wrong[-1] + 1 if len(wrong) else 0
    return 1.0 - k / len(match)


@METRICS.register("extraction_strength")
def extraction_strength(samples, oracle=None) -> float:
    rows = split_rows(samples, "forget", "extraction_strength", ("answer_token_match",))
    return float(np.mean([extraction_strength_of(m) for m in rows["answer_token_match"]]))
