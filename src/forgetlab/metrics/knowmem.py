"""MUSE knowledge memorization (Shi et al. 2025, "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models", ICLR, criterion C2 KnowMem, and C4 utility preservation on retain).

    KnowMem(f, D) = (1/|D|) Σ_{(q, a) in D} ROUGE-L(f(q), a)

f(q) is the model's greedy answer to q, scored by ROUGE-L F1 (rouge-score, stemming) as in
open-unlearning's MUSE configs (rougeL_f1). Returns ``forget_knowmem`` (D = forget QA: lower is
better after unlearning) and ``retain_knowmem`` (D = retain QA: utility). Differences from MUSE:
the QA are the synthetic world's, asked in the training prompt format without MUSE's few-shot
context, and the answer is generated up to evaluate.max_new_tokens.
In a muse study (forgetlab.eval.muse) D is MUSE's knowmem forget_qa / retain_qa, asked in the
same prompt without MUSE's in-context examples, the answer cut at MUSE's stop words.
Hand-worked: generated "a b c" against "a x c d": LCS 2, precision 2/3, recall 2/4, F1 = 4/7.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, require_values, uses
from forgetlab.metrics._muse import split_of


@METRICS.register("knowmem")
@uses(columns=("rouge_l_f1",))
def knowmem(samples, oracle=None, role="model") -> dict[str, float]:
    return {f"{split}_knowmem": float(require_values(samples, split_of(samples, "knowmem", split), "rouge_l_f1",
                                                     "knowmem").mean())
            for split in ("forget", "retain")}
