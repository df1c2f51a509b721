"""MUSE verbatim memorization (Shi et al. 2025, "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models", ICLR, criterion C1 VerbMem).

    VerbMem(f, D_forget) = (1/|D_forget|) Σ_{x in D_forget} ROUGE-L(f(x_[:l]), x_[l+1:])

with f(x_[:l]) the model's greedy continuation of the first l tokens of a forget text, scored by
ROUGE-L F1 against the true continuation (open-unlearning's MUSE config: rougeL_f1). Returned as
``forget_verbmem``.

The forget texts: the forget authors have no rows in corpus.jsonl, and the text the target was
trained on verbatim is each forget QA in its training format, "<bos>Question: q\\nAnswer: a<eos>".
So x is that sequence, x_[:l] ends after the first n // 2 of the n tokens of " " + a, and the
continuation is the rest of a (eos excluded). Per-sample columns verbmem_generated,
verbmem_continuation and verbmem_rouge_l_f1 (evaluate computes them for the forget split only).
In a muse study (forgetlab.eval.muse) x_[:l] and x_[l+1:] are MUSE's own verbmem forget prompts
and their ground-truth continuations (fields prompt, gt).
Hand-worked: continuations scoring F1 1.0 and 0.5 give 0.75.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, require_values, uses
from forgetlab.metrics._muse import split_of


@METRICS.register("verbmem")
@uses(columns=("verbmem_rouge_l_f1",))
def verbmem(samples, oracle=None, role="model") -> dict[str, float]:
    split = split_of(samples, "verbmem", "forget")
    return {"forget_verbmem": float(require_values(samples, split, "verbmem_rouge_l_f1", "verbmem").mean())}
