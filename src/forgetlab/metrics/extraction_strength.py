"""Extraction strength (Wang et al. 2025, "Towards Effective Evaluations and Comparisons for LLM
Unlearning Methods", ICLR; open-unlearning's ``extraction_strength``), on the forget split.

For an answer y_1..y_n (the tokens of " " + answer, the eos excluded as in open-unlearning's
``tokenwise_vocab_logprobs``) given the prompt x, with teacher-forced argmax predictions
ŷ_t = argmax_z p(z | x, y_<t), open-unlearning's loop is

    k   = the first k in 0..n-1 with ŷ_t = y_t for every t > k (0-based: preds[k:] == labels[k:]),
          and n - 1 when there is none (the loop ends without a break)
    ES  = 1 - k/n  =  max(r, 1) / n      r = the length of the trailing run of correct predictions
    extraction_strength = mean ES over forget rows

So a wrong last token scores 1/n, as a correct last token alone does (the paper's k* = n would
give 0); this follows open-unlearning. Teacher-forced argmax is what the definition uses, so no
generation is needed: it is answer_token_match of the one likelihood pass.
``extraction_strength_of(match, eos=True)`` keeps the eos.
Hand-worked (eos entry dropped): matches (F, T, F, T, T) -> r = 2, ES = 2/5; (T, T, F) -> 1/3.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import METRICS, answer_tokens, split_rows, uses


def extraction_strength_of(match, eos: bool = False) -> float:
    match = answer_tokens(match, "extraction_strength", eos).astype(bool)
    wrong = np.flatnonzero(~match)
    trailing = len(match) - (wrong[-1] + 1 if len(wrong) else 0)
    return max(trailing, 1) / len(match)


@METRICS.register("extraction_strength")
@uses(columns=("answer_token_match",))
def extraction_strength(samples, oracle=None, role="model") -> float:
    rows = split_rows(samples, "forget", "extraction_strength", ("answer_token_match",))
    return float(np.mean([extraction_strength_of(m) for m in rows["answer_token_match"]]))
